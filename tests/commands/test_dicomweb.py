"""experiments.predict fetching its CT (and the ROI as a DICOM SEG) from a real PACS: Debian's Orthanc with its
DICOMweb plugin on 127.0.0.1, holding the real JPEG 2000 CT series of examples/real-ct/ under a patient identity."""

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.sr.codedict import codes
from pydicom.uid import MRImageStorage, ParametricMapStorage, generate_uid

from experiments.predict import main as predict
from explain.structured_report import CALLS, PROBABILITY, THRESHOLD
from tests.shared_run import final_model_store
from vfrac.errors import InputError
from vfrac.io.dicomweb import Pacs, credentials
from vfrac.io.grid import place_on_grid
from vfrac.io.nifti import read_nifti
from vfrac.io.volume import load_mask, load_volume

REAL = Path(__file__).resolve().parents[2] / "examples" / "real-ct"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")  # Debian puts it in sbin
USER, PASSWORD = "radiology", "pacs-secret-7"
IDENTITY = {"PatientID": "MRN-0042", "PatientName": "Doe^Jane"}

pytestmark = pytest.mark.skipif(ORTHANC is None or not PLUGIN.is_file(),
                                reason="Debian's orthanc and orthanc-dicomweb are not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """One Orthanc server with its DICOMweb plugin and a login, in its own folder."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        config = {"Name": "vfrac-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "HttpPort": self.port, "DicomPort": free_port(), "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
                  "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.process = None

    def start(self):
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{self.port}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return
            time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)

    def upload(self, datasets):
        for ds in datasets:
            path = self.folder / "upload.dcm"
            ds.save_as(path, enforce_file_format=True)
            answer = requests.post(f"http://127.0.0.1:{self.port}/instances", data=path.read_bytes(),
                                   auth=(USER, PASSWORD), timeout=30)
            assert answer.ok, answer.text


def hospital_series(study: str) -> list[pydicom.Dataset]:
    """The real CT series as a hospital stores it: UIDs and a patient identity (the example's were removed)."""
    series = generate_uid()
    datasets = []
    for path in sorted((REAL / "abdomen-t11-t12-dicom").iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.PatientID, ds.PatientName = IDENTITY["PatientID"], IDENTITY["PatientName"]
        datasets.append(ds)
    return datasets


def t12_seg(cts: list[pydicom.Dataset], folder: Path) -> pydicom.Dataset:
    """A DICOM SEG of the example's T12 (label 32), written with highdicom on the CT's own frames."""
    for k, ds in enumerate(cts):
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    volume = load_volume(folder)
    t12 = load_mask(REAL / "abdomen-t11-t12-labels.nii.gz", volume, 32) == 32  # the label map, T12 picked
    by_position = {round(float(np.dot(ds.ImagePositionPatient, volume.affine[:3, 0] / np.linalg.norm(
        volume.affine[:3, 0]))), 3): ds for ds in cts}
    ordered = [by_position[round(float(np.dot(volume.affine[:3, 3] + z * volume.affine[:3, 0],
                                              volume.affine[:3, 0] / np.linalg.norm(volume.affine[:3, 0]))), 3)]
               for z in range(volume.shape[0])]
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="T12", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Bone, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    return hd.seg.Segmentation(ordered, t12.astype(np.uint8), hd.seg.SegmentationTypeValues.BINARY, [segment],
                               generate_uid(), 50, generate_uid(), 1, "vfrac tests", "tests", "0.1", "1")


def mr_series(ct: pydicom.Dataset, study: str) -> pydicom.Dataset:
    mr = copy.deepcopy(ct)  # Dataset.copy() shares its elements: setting one would change the CT's
    mr.Modality, mr.SOPClassUID = "MR", MRImageStorage
    mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    mr.SeriesInstanceUID, mr.SOPInstanceUID = generate_uid(), generate_uid()
    mr.file_meta.MediaStorageSOPInstanceUID = mr.SOPInstanceUID
    mr.StudyInstanceUID = study
    return mr


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding one study (the CT, a SEG of its T12, an MR series) and a study with an MR only."""
    folder = tmp_path_factory.mktemp("orthanc")
    server = Orthanc(folder)
    server.start()
    study, mr_study = generate_uid(), generate_uid()
    cts = hospital_series(study)
    seg = t12_seg(cts, tmp_path_factory.mktemp("ct"))
    mr = mr_series(cts[0], study)
    server.upload([*cts, seg, mr, mr_series(cts[0], mr_study)])
    yield {"server": server, "study": study, "mr_study": mr_study, "ct": cts[0].SeriesInstanceUID,
           "seg": seg.SeriesInstanceUID, "mr": mr.SeriesInstanceUID}
    server.stop()


def test_a_ct_series_fetched_over_dicomweb_reads_as_the_files_do(pacs, tmp_path):
    client = Pacs(pacs["server"].url, (USER, PASSWORD))
    series = client.ct_series(pacs["study"])  # the MR and the SEG beside it are not candidates
    assert series.uid == pacs["ct"] and series.instances == 20 and series.modality == "CT"
    paths = client.fetch(pacs["study"], series, tmp_path / "ct")
    assert len(paths) == 20
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # as stored
    fetched, local = load_volume(tmp_path / "ct"), load_volume(REAL / "abdomen-t11-t12-dicom")
    assert np.array_equal(fetched.hu, local.hu) and np.allclose(fetched.affine, local.affine)
    (seg,) = client.fetch(pacs["study"], client.seg_series(pacs["study"], pacs["seg"]), tmp_path / "seg")
    t12 = load_mask(REAL / "abdomen-t11-t12-labels.nii.gz", local, 32) == 32
    assert np.array_equal(load_mask(seg, fetched, 1) != 0, t12)  # voxel for voxel


def test_the_pacs_answers_that_are_not_a_ct_are_clear_errors(pacs, monkeypatch):
    url, study = pacs["server"].url, pacs["study"]
    client = Pacs(url, (USER, PASSWORD))
    for call, message in [
            (lambda: Pacs(url, (USER, "wrong")).series(study), "refused the credentials \\(HTTP 401\\)"),
            (lambda: Pacs(url).series(study), "refused the credentials"),
            (lambda: client.series("1.2.3.4"), "has no study 1.2.3.4"),
            (lambda: client.ct_series(study, pacs["mr"]), "is MR, not CT"),
            (lambda: client.ct_series(pacs["mr_study"]), "holds no CT series"),
            (lambda: client.seg_series(study, pacs["ct"]), "is CT, not a DICOM SEG"),
            (lambda: Pacs("http://127.0.0.1:9/dicom-web").series(study), "cannot reach the DICOMweb server"),
            (lambda: Pacs("pacs.example.org"), "expected the server's DICOMweb root")]:
        with pytest.raises(InputError, match=message) as refused:
            call()
        assert PASSWORD not in str(refused.value) and "wrong" not in str(refused.value)
    monkeypatch.setenv("VFRAC_MAX_VOXELS", "1000000")
    with pytest.raises(InputError, match="claims 20 x 512 x 512 voxels"):
        client.check_budget(study, client.ct_series(study))


def test_credentials_come_from_the_environment_or_a_private_file(tmp_path):
    assert credentials(environ={"VFRAC_DICOMWEB_USER": "u", "VFRAC_DICOMWEB_PASSWORD": "p"}) == ("u", "p")
    assert credentials(environ={}) is None
    with pytest.raises(InputError, match="set both"):
        credentials(environ={"VFRAC_DICOMWEB_USER": "u"})
    login = tmp_path / "pacs-login"
    login.write_text("u:p:with:colons\n")
    login.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        credentials(login)
    login.chmod(0o600)
    assert credentials(login) == ("u", "p:with:colons")


@pytest.mark.slow
def test_predict_from_the_pacs_files_its_outputs_with_the_ct_and_keeps_the_identity_out_of_the_research_files(
        pacs, tmp_path_factory, tmp_path, monkeypatch):
    """The prediction equals the files' one; --dicom-output study --send stores the overlays and maps as new
    series of the CT's study (its patient, its images referenced), and the research files stay pseudonymous."""
    folder, _, _ = final_model_store(tmp_path_factory)
    tracking = ["--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--model", "models:/vfrac-resnet50/1"]
    assert predict([*tracking, "--ct", str(REAL / "abdomen-t11-t12-dicom"), "--roi",
                    str(REAL / "abdomen-t11-t12-labels.nii.gz"), "--roi-label", "32",
                    "--out", str(tmp_path / "files")]) == 0
    monkeypatch.setenv("VFRAC_DICOMWEB_USER", USER)
    monkeypatch.setenv("VFRAC_DICOMWEB_PASSWORD", PASSWORD)
    assert predict([*tracking, "--dicomweb", pacs["server"].url, "--study", pacs["study"], "--seg-series",
                    pacs["seg"], "--out", str(tmp_path / "pacs"), "--dicom-output", "study", "--send"]) == 0
    files, fetched = (json.loads((tmp_path / name / "prediction.json").read_text()) for name in ("files", "pacs"))
    assert fetched["probability"] == pytest.approx(files["probability"], abs=1e-6)
    assert [s["probability"] for s in fetched["slices"]] == pytest.approx([s["probability"] for s in files["slices"]],
                                                                          abs=1e-6)
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "pacs").rglob("*") if p.suffix in
                      (".json", ".html"))
    assert all(identity not in written for identity in (*IDENTITY.values(), PASSWORD, pacs["study"]))
    assert fetched["sent"] == {"Secondary Capture Image Storage": len(fetched["slices"]), "Parametric Map Storage": 1,
                               "Segmentation Storage": 1, "Comprehensive 3D SR Storage": 1}
    client = Pacs(pacs["server"].url, (USER, PASSWORD))
    modalities = sorted(s.modality for s in client.series(pacs["study"]))
    assert modalities == ["CT", "MR", "OT", "OT", "SEG", "SEG", "SR"]  # the CT's study: overlays, map, ROI, report
    ct_headers = [pydicom.dcmread(p, stop_before_pixels=True)
                  for p in client.fetch(pacs["study"], client.ct_series(pacs["study"]), tmp_path / "ct")]
    ct_instances, ct_frame = {h.SOPInstanceUID for h in ct_headers}, ct_headers[0].FrameOfReferenceUID
    ct_volume = load_volume(tmp_path / "ct")
    for path in sorted((tmp_path / "pacs" / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == pacs["study"] and ds.PatientID == IDENTITY["PatientID"]
        assert str(ds.PatientName) == IDENTITY["PatientName"]
        referenced = ds.get("SourceImageSequence") or [  # SC; PM and SEG per frame; SR in its evidence
            item for frame in ds.get("PerFrameFunctionalGroupsSequence", [])
            for derivation in frame.get("DerivationImageSequence", []) for item in derivation.SourceImageSequence] or [
            item for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence]
        assert referenced and {item.ReferencedSOPInstanceUID for item in referenced} <= ct_instances
        if ds.Modality == "SR":  # the report's numbers are prediction.json's
            numbers = {item.ConceptNameCodeSequence[0].CodeValue: float(item.MeasuredValueSequence[0].NumericValue)
                       for item in content_items(ds) if "MeasuredValueSequence" in item}
            assert numbers[PROBABILITY.value] == pytest.approx(fetched["probability"], abs=1e-6)
            assert numbers[THRESHOLD.value] == fetched["threshold"]
            assert CALLS[fetched["call"]].value in {item.ConceptCodeSequence[0].CodeValue
                                                    for item in content_items(ds) if "ConceptCodeSequence" in item}
            continue
        if ds.SOPClassUID == ParametricMapStorage:  # placed by its own geometry in the CT's frame: the NIfTI map
            found = hd.pm.ParametricMap.from_dataset(ds).get_volume()
            assert found.frame_of_reference_uid == ct_frame
            placed = place_on_grid(np.asarray(found.array), np.asarray(found.affine), ct_volume, source=path)
            expected, _ = read_nifti(tmp_path / "pacs" / fetched["maps"]["gradcam"], np.float32)
            np.testing.assert_allclose(placed, expected, atol=1e-6)
        if ds.Modality == "SEG":  # the ROI the model was given, read back on the CT's grid
            t12 = load_mask(REAL / "abdomen-t11-t12-labels.nii.gz", load_volume(tmp_path / "ct"), 32) == 32
            assert np.array_equal(load_mask(path, load_volume(tmp_path / "ct"), 1) != 0, t12)
        if shutil.which("dciodvfy"):
            checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            assert not [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def content_items(ds):
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


@pytest.mark.slow
def test_a_pacs_gone_in_the_middle_of_the_retrieval_is_an_error_and_leaves_no_outputs(tmp_path_factory, tmp_path,
                                                                                       monkeypatch, capsys):
    """The server is killed (SIGKILL) once the first CT instance has arrived, and the stream ends there (what
    the client had buffered is not used): one error, nothing in --out."""
    folder, _, _ = final_model_store(tmp_path_factory)
    server = Orthanc(tmp_path_factory.mktemp("orthanc-gone"))
    server.start()
    study = generate_uid()
    server.upload(hospital_series(study))
    retrieve = DICOMwebClient.iter_series

    def server_dies_after_the_first(self, *args, **kwargs):
        yield next(retrieve(self, *args, **kwargs))
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)

    monkeypatch.setattr(DICOMwebClient, "iter_series", server_dies_after_the_first)
    monkeypatch.setenv("VFRAC_DICOMWEB_USER", USER)
    monkeypatch.setenv("VFRAC_DICOMWEB_PASSWORD", PASSWORD)
    out = tmp_path / "out"
    assert predict(["--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--model", "models:/vfrac-resnet50/1",
                    "--dicomweb", server.url, "--study", study, "--roi", str(REAL / "abdomen-t11-t12-labels.nii.gz"),
                    "--roi-label", "32", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "gave 1 of the 20 instances" in error and "cut short" in error, error
    assert PASSWORD not in error and (not out.exists() or not any(out.iterdir()))
