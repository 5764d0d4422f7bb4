"""``maskray serve``: a local web page to place nodules on a mask, generate, compare and download the pair."""
