"""The size of an image's pixels: read from its file, given by the user, or unknown; and the zoom a nucleus size asks for.

    calibration = from_tiff(tiff)                          # OME-XML, ImageJ, or the TIFF resolution tags
    calibration = Calibration(0.325, "option")             # --pixel-size 0.325 (micrometres per pixel)
    zoom = zoom_for_diameter(7.0, calibration, nucleus_area=365.0)   # --diameter 7 (micrometres)

Pixel sizes are kept in micrometres. A file that says nothing, or says what a screen or printer default says (72 dots
per inch), is uncalibrated: its measurements stay in pixels, exactly as for an image without a file.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from nucleunet.errors import UserError

log = logging.getLogger("nucleunet.calibration")

# Micrometres per unit, for the unit names that OME-XML, ImageJ and TIFF use.
MICROMETRES = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
               "micrometer": 1.0, "micrometre": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6, "inch": 25400.0, "in": 25400.0}
# Resolutions that image programs write when they know nothing of the pixels' size (dots per inch).
DEFAULT_DPI = (1.0, 72.0, 96.0, 150.0, 300.0, 600.0)
# A pixel size outside this range (micrometres) is not a microscope's: it is ignored with a warning.
PLAUSIBLE_PIXEL_SIZE = (0.005, 50.0)
# Nuclei whose median diameter comes out outside this range (micrometres) suggest a wrong pixel size.
PLAUSIBLE_DIAMETER = (1.5, 60.0)
SOURCES = ("ome", "imagej", "tiff", "option", "none")


@dataclass(frozen=True)
class Calibration:
    """How large an image's pixels are.

    Attributes
    ----------
    pixel_size : float or None
        Micrometres per pixel (the X size, where X and Y differ); None: unknown.
    source : str
        Where it comes from: 'ome', 'imagej' or 'tiff' (the file's metadata), 'option' (given by the user), or
        'none'.
    """

    pixel_size: float | None = None
    source: str = "none"

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.pixel_size is not None:
            check_pixel_size(self.pixel_size, what="pixel size")

    @property
    def known(self) -> bool:
        return self.pixel_size is not None


UNKNOWN = Calibration()


def check_pixel_size(value, *, what: str = "--pixel-size") -> float:
    """``value`` as micrometres per pixel; a ``UserError`` naming ``what`` unless it is a positive, finite number
    within ``PLAUSIBLE_PIXEL_SIZE``."""
    low, high = PLAUSIBLE_PIXEL_SIZE
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high):
        raise UserError(f"{what} must be micrometres per pixel in [{low}, {high}], got {value!r}")
    return float(value)


def from_tiff(tiff, where: str = "image") -> Calibration:
    """The pixel size a TIFF states: OME-XML (``PhysicalSizeX`` and its unit), else ImageJ's metadata (its
    ``unit`` with the resolution tags), else the resolution tags with a unit of centimetres or inches (not a
    screen's or printer's default dots per inch). Implausible values are ignored with a warning."""
    found = _ome(tiff) or _imagej(tiff) or _resolution_tags(tiff)
    if found is None:
        return UNKNOWN
    size, source = found
    try:
        size = float(f"{size:.6g}")  # 1 / (1 / 0.325) is 0.32499999999999996
        return Calibration(check_pixel_size(size, what=f"{where}: the pixel size its file states"), source)
    except UserError as error:
        log.warning("%s; the image is treated as uncalibrated", error)
        return UNKNOWN


def _in_micrometres(value: float, unit: str | None) -> float | None:
    factor = MICROMETRES.get((unit or "").strip().lower().replace("\\u00b5", "µ"))
    return None if factor is None else value * factor


def _ome(tiff) -> tuple[float, str] | None:
    if not tiff.is_ome or not tiff.ome_metadata:
        return None
    try:
        root = ElementTree.fromstring(tiff.ome_metadata)
    except ElementTree.ParseError:
        return None
    pixels = next((element for element in root.iter() if element.tag.endswith("Pixels")), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    size = _in_micrometres(float(pixels.get("PhysicalSizeX")), pixels.get("PhysicalSizeXUnit", "µm"))
    return None if size is None else (size, "ome")


def _x_resolution(tiff) -> float | None:
    """Pixels per unit in X from the first page's resolution tag, or None."""
    tag = tiff.pages[0].tags.get("XResolution")
    if tag is None:
        return None
    numerator, denominator = tag.value
    return numerator / denominator if denominator else None


def _imagej(tiff) -> tuple[float, str] | None:
    metadata = tiff.imagej_metadata or {}
    unit = metadata.get("unit")
    resolution = _x_resolution(tiff)
    if not unit or not resolution:
        return None
    size = _in_micrometres(1.0 / resolution, unit)
    return None if size is None else (size, "imagej")


def _resolution_tags(tiff) -> tuple[float, str] | None:
    resolution = _x_resolution(tiff)
    tag = tiff.pages[0].tags.get("ResolutionUnit")
    unit = {2: "inch", 3: "cm"}.get(int(tag.value) if tag is not None else 2)
    if not resolution or unit is None or (unit == "inch" and any(math.isclose(resolution, dpi) for dpi in
                                                                  DEFAULT_DPI)):
        return None
    return _in_micrometres(1.0 / resolution, unit), "tiff"


def reference_diameter(nucleus_area: float) -> float:
    """The diameter (pixels) of a disc of ``nucleus_area`` pixels: the model's training nucleus size as a diameter.

    Examples
    --------
    >>> round(reference_diameter(365.0), 1)
    21.6
    """
    return 2.0 * math.sqrt(nucleus_area / math.pi)


def zoom_for_diameter(diameter: float, calibration: Calibration, nucleus_area: float | None) -> float:
    """The zoom that brings nuclei of ``diameter`` (micrometres with a known pixel size, else pixels) to the size of
    the model's training nuclei (``nucleus_area`` pixels, ``reference_diameter``).

    Examples
    --------
    >>> round(zoom_for_diameter(7.0, Calibration(0.325, "option"), 365.0), 3)  # 7 um at 0.325 um: 21.5 pixels
    1.001
    >>> round(zoom_for_diameter(10.8, UNKNOWN, 365.0), 2)                       # 10.8 pixels: zoom 2
    2.0
    """
    if not (isinstance(diameter, (int, float)) and math.isfinite(diameter) and diameter > 0):
        raise UserError(f"--diameter must be a positive number, got {diameter!r}")
    if nucleus_area is None:
        raise UserError("--diameter needs the typical nucleus size of the model's training images (nucleus_area in "
                        "its postprocessing.json), which this model's files do not give: run 'tune' on it once")
    pixels = diameter / calibration.pixel_size if calibration.known else diameter
    return reference_diameter(nucleus_area) / pixels


def plausibility(median_diameter_pixels: float, calibration: Calibration, where: str) -> str | None:
    """A warning where nuclei of this median diameter would be implausibly small or large at the pixel size, else
    None: the pixel size (or the segmentation) is probably wrong."""
    if not calibration.known or median_diameter_pixels <= 0:
        return None
    micrometres = median_diameter_pixels * calibration.pixel_size
    low, high = PLAUSIBLE_DIAMETER
    if low <= micrometres <= high:
        return None
    return (f"{where}: its nuclei measure {micrometres:.2g} µm across (median) at {calibration.pixel_size:g} µm per "
            f"pixel ({calibration.source}); nuclei are {low}-{high} µm: is the pixel size right?")

