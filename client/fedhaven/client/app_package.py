"""What a site accepts from a run's app package (FAB): a bare pointer to its own installed ClientApp, no code."""

from __future__ import annotations

import hashlib
import io
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata

from fedhaven.client.seam.formats import FAB_BOOKKEEPING_FILES, FAB_CONFIG_FILE

#: The only ClientApp a site ever runs: the one in its own installed fedhaven.
INSTALLED_CLIENTAPP = "fedhaven.client.deployment:app"
#: Files a package may hold: its pyproject.toml and Flower's own bookkeeping (the FAB layout, `seam.formats`).
_ALLOWED_FILES = FAB_BOOKKEEPING_FILES
MAX_PACKAGE_BYTES = 1 << 20  # a package that only names an app is a few KiB


def installed_version() -> str:
    """The fedhaven version this site runs, whatever a run's package says."""
    try:
        return metadata.version("fedhaven")
    except metadata.PackageNotFoundError:  # pragma: no cover - always installed in practice
        return "unknown"


@dataclass(frozen=True)
class PackageReview:
    """A site's verdict on a run's app package: the problems found (none: accepted)."""

    sha256: str
    clientapp: str | None
    files: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return not self.problems


def review_package(*, content: bytes, allowed_hashes: tuple[str, ...] = ()) -> PackageReview:
    """Inspect a FAB without installing, importing or executing anything from it.

    Accepted only when it holds nothing but pyproject.toml (and Flower's CONTENT
    list), names fedhaven's installed ClientApp, asks for no dependencies, and,
    when the site keeps an allow-list of reviewed packages, its SHA-256 is listed.
    """
    digest = hashlib.sha256(content).hexdigest()
    problems: list[str] = []
    if len(content) > MAX_PACKAGE_BYTES:
        return PackageReview(digest, None, (), (f"the app package is {len(content)} bytes; a fedhaven run's package "
                                                 f"only names the installed app (a few KiB)",))
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        names = tuple(sorted(i.filename for i in archive.infolist()))
        extra = [n for n in names if n not in _ALLOWED_FILES]
        if extra:
            shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
            problems.append(f"the app package carries files of its own ({shown}); this site runs no code that "
                            f"arrives with a run")
        info = archive.getinfo(FAB_CONFIG_FILE)
        if info.file_size > MAX_PACKAGE_BYTES:
            raise ValueError("pyproject.toml is too large")
        doc = tomllib.loads(archive.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return PackageReview(digest, None, (), (f"the app package is not a readable Flower app bundle ({exc})",))
    app = doc.get("tool", {}).get("flwr", {}).get("app", {})
    components = app.get("components", {}) if isinstance(app, dict) else {}
    clientapp = components.get("clientapp") if isinstance(components, dict) else None
    if clientapp != INSTALLED_CLIENTAPP:
        problems.append(f"the app package names the ClientApp {clientapp!r}; this site only runs its installed "
                        f"fedhaven ClientApp ({INSTALLED_CLIENTAPP}, fedhaven {installed_version()})")
    deps = doc.get("project", {}).get("dependencies", [])
    if deps:
        problems.append(f"the app package asks for dependencies {list(deps)[:5]}; a site installs nothing a run "
                        f"brings")
    if allowed_hashes and digest not in allowed_hashes:
        problems.append(f"the app package {digest[:16]}... is not among the packages this site reviewed "
                        f"(policy.allowed_app_packages)")
    return PackageReview(digest, clientapp if isinstance(clientapp, str) else None, names, tuple(problems))
