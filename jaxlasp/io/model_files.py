"""Named models: a model file fetched once into the user's cache, then used offline.

``--model elodie32`` (``load_model("elodie32")``) is the ELODIE 3.2 TGM emulator that LASP and
PyLASP fit with, ``elodie32_flux_tgm.fits`` of the ULySS distribution (its ``models/`` folder; the
same file is in PyLASP's repository, ``LASP-CurveFit/tgm_model/``). The first use downloads it
with astropy (``astropy.utils.data.download_file``), checks that it reads as a TGM model (and its
SHA-256 where one is pinned), and keeps it as ``$JAXLASP_MODEL_DIR/elodie32_flux_tgm.fits``
(default ``$XDG_CACHE_HOME/jaxlasp/models``, i.e. ``~/.cache/jaxlasp/models``); later uses read
that file without the network. ``$JAXLASP_ELODIE32_URL`` points the download at a mirror.
Offline, the error says what to download and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from jaxlasp.io.tgm_files import read_tgm_fits

MODEL_DIR_ENV = "JAXLASP_MODEL_DIR"
"""Environment variable naming the folder of fetched models."""


@dataclass(frozen=True)
class NamedModel:
    """A model file that jaxlasp can fetch: where from, the file name it keeps, what it is."""

    url: str
    filename: str
    description: str
    sha256: str | None = None  # pinned digest of the file, checked after every download

    def url_env(self, name: str) -> str:
        """The environment variable that overrides ``url``: ``JAXLASP_<NAME>_URL``."""
        return f"JAXLASP_{name.upper()}_URL"


NAMED_MODELS = {
    "elodie32": NamedModel(
        url="http://ulyss.univ-lyon1.fr/models/elodie32_flux_tgm.fits",
        filename="elodie32_flux_tgm.fits",
        description="ELODIE 3.2 TGM emulator (Prugniel & Soubiran 2001; ULySS, Koleva et al. "
                    "2009), the model of LAMOST's LASP and of PyLASP"),
}
"""The models ``--model NAME`` fetches."""


class ModelUnavailable(OSError):
    """A named model that is not in the cache and cannot be downloaded (or was not a model)."""


def model_dir() -> Path:
    """``$JAXLASP_MODEL_DIR``, else ``$XDG_CACHE_HOME/jaxlasp/models`` (``~/.cache/...``)."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxlasp" / "models"


def is_named_model(name) -> bool:
    """Whether ``name`` is one of ``NAMED_MODELS`` (and not an existing file of that name)."""
    return isinstance(name, str) and name in NAMED_MODELS and not Path(name).exists()


def named_model_path(name: str, *, show_progress: bool = False) -> Path:
    """The local file of the named model, downloaded into ``model_dir()`` on first use.

    Raises ModelUnavailable, with what to download and where to put it, when the download fails
    or what came back is not the model.
    """
    entry = NAMED_MODELS[name]
    target = model_dir() / entry.filename
    if target.is_file():
        return target
    url = os.environ.get(entry.url_env(name)) or entry.url
    by_hand = (f"download {entry.filename} by hand (the ULySS distribution's models/ folder, "
               f"or PyLASP's LASP-CurveFit/tgm_model/), then pass --model PATH or put it at "
               f"{target}; `jaxlasp info PATH` checks it")
    from astropy.utils.data import download_file

    try:
        fetched = Path(download_file(url, cache=False, show_progress=show_progress, timeout=60))
    except Exception as err:  # URLError, timeouts, HTTP errors: all mean "not from here"
        raise ModelUnavailable(f"cannot download the {name} model from {url} ({err}); "
                               f"{by_hand}") from err
    try:
        _check_download(fetched, entry, url, by_hand)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.move(fetched, staged)
        os.replace(staged, target)  # concurrent first uses: each rename installs a whole file
    finally:
        fetched.unlink(missing_ok=True)
    return target


def _check_download(path: Path, entry: NamedModel, url: str, by_hand: str) -> None:
    """Raise ModelUnavailable unless ``path`` has the pinned digest and reads as a TGM model."""
    if entry.sha256:
        with open(path, "rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        if digest != entry.sha256:
            raise ModelUnavailable(f"{url} sent a file with SHA-256 {digest}, not the expected "
                                   f"{entry.sha256}; {by_hand}")
    try:
        read_tgm_fits(path)
    except (OSError, ValueError) as err:
        raise ModelUnavailable(f"{url} did not send a TGM model file ({err}); {by_hand}") from err
