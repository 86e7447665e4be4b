"""The analyst app's entrypoint and the UI helpers its pages share."""

from pathlib import Path

# Both apps' browser-tab icon, served from the repository (a Material icon is fetched from a font server).
FAVICON = Path(__file__).with_name("favicon.png")
