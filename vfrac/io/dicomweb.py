"""A CT series, and a DICOM SEG of its ROI, fetched from a PACS over DICOMweb into a folder the file readers read.

QIDO-RS finds the study's series, WADO-RS retrieves one, instance by instance, into a
folder (the caller's temporary one), so the CT goes through the same readers, checks
and voxel budget as a series on disk; the budget is checked from the QIDO-RS answer,
before anything is downloaded. Credentials come from the environment or a file and are
never shown; HTTPS is verified against the system's CA store. A server that cannot be
reached, refuses the credentials, does not know the study or holds no CT is an
InputError that says so.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian

from vfrac.errors import InputError
from vfrac.io.budget import check_voxel_budget

USER_VARIABLE, PASSWORD_VARIABLE = "VFRAC_DICOMWEB_USER", "VFRAC_DICOMWEB_PASSWORD"
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
TIMEOUT = 30  # s without an answer before a request is given up
RETRIES = 3
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # as stored: no transcoding on the server


@dataclass(frozen=True)
class Series:
    """A series as QIDO-RS describes it."""

    uid: str
    modality: str
    number: str
    description: str
    instances: int

    def describe(self) -> str:
        return f"series {self.number or '?'} {self.description!r} ({self.modality}, {self.instances} instances)"


def credentials(file: Path | None = None, environ=os.environ) -> tuple[str, str] | None:
    """(user, password) from `file` (one line `user:password`, readable by its owner only) or from
    $VFRAC_DICOMWEB_USER and $VFRAC_DICOMWEB_PASSWORD; None for a server without login."""
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise InputError(f"DICOMweb credentials file not found: {path}")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"{path}: others may read this credentials file; chmod 600 it")
        user, separator, password = path.read_text().strip().partition(":")
        if not separator or not user:
            raise InputError(f"{path}: expected one line user:password")
        return user, password
    user, password = environ.get(USER_VARIABLE), environ.get(PASSWORD_VARIABLE)
    if user and password is not None:
        return user, password
    if user or password:
        raise InputError(f"set both ${USER_VARIABLE} and ${PASSWORD_VARIABLE}, or neither")
    return None


def shown(url: str) -> str:
    """The server's URL without any user or password in it: how it is named in messages."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))) \
        if parts.hostname else url


class Pacs:
    """One DICOMweb server; every call's failure is an InputError naming the server, never its password."""

    def __init__(self, url: str, login: tuple[str, str] | None = None, timeout: float = TIMEOUT):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise InputError(f"--dicomweb {shown(url)!r}: expected the server's DICOMweb root, "
                             "e.g. https://pacs.example.org/dicom-web")
        session = requests.Session()
        session.auth = login
        bundle = next((b for b in SYSTEM_CA_BUNDLES if Path(b).is_file()), None)
        if bundle and not os.environ.get("REQUESTS_CA_BUNDLE"):
            session.verify = bundle
        self.url = shown(url)
        self.client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
        # a busy server's 429/503 and a refused connection: 3 tries, 0.5 s then 1 s apart (the client's default
        # of 5 tries with doubling waits kept an unreachable server's error back for 30 s)
        self.client.set_http_retry_params(max_attempts=RETRIES, wait_exponential_multiplier=500)

    @contextlib.contextmanager
    def _asking(self, what: str):
        try:
            yield
        except requests.exceptions.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status in (401, 403):
                raise InputError(f"{self.url} refused the credentials (HTTP {status}) {what}: set "
                                 f"${USER_VARIABLE} and ${PASSWORD_VARIABLE} or --dicomweb-credentials") from None
            raise InputError(f"{self.url} answered HTTP {status} {what}") from None
        except requests.exceptions.Timeout:
            raise InputError(f"{self.url} did not answer {what} within {TIMEOUT} s") from None
        except requests.exceptions.RequestException as error:
            raise InputError(f"cannot reach the DICOMweb server {self.url} {what}: "
                             f"{type(error).__name__}") from None

    def series(self, study: str) -> list[Series]:
        """The study's series; an InputError when the server does not know the study."""
        with self._asking(f"when asked for study {study}'s series"):
            found = self.client.search_for_series(
                study_instance_uid=study, get_remaining=True,
                fields=["Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances"])
        if not found:
            raise InputError(f"{self.url} has no study {study}")
        return [_series(pydicom.Dataset.from_json(item)) for item in found]

    def ct_series(self, study: str, uid: str | None = None) -> Series:
        """The study's CT series: the one `uid` names, or its only one."""
        every = self.series(study)
        if uid is not None:
            (chosen,) = [s for s in every if s.uid == uid] or [None]
            if chosen is None:
                raise InputError(f"study {study} on {self.url} has no series {uid}; it holds: "
                                 + "; ".join(s.describe() for s in every))
            if chosen.modality != "CT":
                raise InputError(f"series {uid} is {chosen.modality}, not CT")
            return chosen
        cts = [s for s in every if s.modality == "CT"]
        if not cts:
            raise InputError(f"study {study} on {self.url} holds no CT series: "
                             + "; ".join(s.describe() for s in every))
        if len(cts) > 1:
            raise InputError(f"study {study} holds {len(cts)} CT series; name one with --series: "
                             + "; ".join(f"{s.describe()} {s.uid}" for s in cts))
        return cts[0]

    def seg_series(self, study: str, uid: str) -> Series:
        chosen = [s for s in self.series(study) if s.uid == uid]
        if not chosen:
            raise InputError(f"study {study} on {self.url} has no series {uid}")
        if chosen[0].modality != "SEG":
            raise InputError(f"series {uid} is {chosen[0].modality}, not a DICOM SEG")
        return chosen[0]

    def check_budget(self, study: str, series: Series) -> None:
        """The series' claimed voxels against the budget, from one instance's header: before any download."""
        with self._asking(f"when asked for series {series.uid}'s image size"):
            found = self.client.search_for_instances(study_instance_uid=study, series_instance_uid=series.uid,
                                                     fields=["Rows", "Columns", "NumberOfFrames"], limit=1)
        if not found:
            raise InputError(f"series {series.uid} on {self.url} holds no instance")
        header = pydicom.Dataset.from_json(found[0])
        frames = int(header.get("NumberOfFrames", 1) or 1)
        check_voxel_budget(f"series {series.uid} on {self.url}", (max(series.instances, 1) * frames,
                                                                   int(header.get("Rows", 0) or 0),
                                                                   int(header.get("Columns", 0) or 0)))

    def store(self, datasets: list) -> None:
        """The datasets stored in the PACS (STOW-RS), each in its own study."""
        with self._asking("when storing the outputs"):
            answer = self.client.store_instances(datasets)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise InputError(f"{self.url} refused {len(failed)} of the {len(datasets)} objects sent")

    def fetch(self, study: str, series: Series, folder: Path) -> list[Path]:
        """Every instance of the series written to `folder` as it arrives, stored as the server holds it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        with self._asking(f"while retrieving series {series.uid}"):
            for number, dataset in enumerate(self.client.iter_series(study, series.uid,
                                                                     media_types=ANY_TRANSFER_SYNTAX), start=1):
                paths.append(_save(dataset, folder / f"{number:05d}.dcm"))
        if not paths or (series.instances and len(paths) != series.instances):
            raise InputError(f"{self.url} gave {len(paths)} of the {series.instances} instances of series "
                             f"{series.uid}: the retrieval was cut short (the server stopped, or the series "
                             "changed); try again")
        return paths


def _series(header: pydicom.Dataset) -> Series:
    def text(name: str) -> str:
        value = header.get(name)
        return "" if value is None else str(value)

    return Series(text("SeriesInstanceUID"), text("Modality"), text("SeriesNumber"), text("SeriesDescription"),
                  int(header.get("NumberOfSeriesRelatedInstances") or 0))


def _save(dataset: pydicom.Dataset, path: Path) -> Path:
    """A retrieved instance as a DICOM file, its file meta made when the part carried none."""
    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta = pydicom.dataset.FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for meta, own in (("MediaStorageSOPClassUID", "SOPClassUID"), ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        if not dataset.file_meta.get(meta) and dataset.get(own):
            setattr(dataset.file_meta, meta, dataset.get(own))
    dataset.save_as(path, enforce_file_format=False)
    return path
