"""Dashboard widgets: each one renders one part of the broker's state."""
