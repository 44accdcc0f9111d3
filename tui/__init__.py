"""The cutq terminal dashboard (Textual).  Entry point: `tui.app.run(endpoint)`.

Talks to the broker only through `shared.client` (via `tui.feed` and `tui.sources`); never imports
broker, worker or rembg.
"""
