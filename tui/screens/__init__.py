"""Dashboard screens: overview, job detail, and the modal dialogs."""
