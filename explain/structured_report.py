"""A prediction as a DICOM Structured Report (TID 1500 measurement report, highdicom), for a PACS.

It holds what a radiologist's system can read without vfrac: the malignancy probability,
the call and the threshold, the fold models' spread and the uncertain flag, and the model
(name and version as the observing device, the digest of its input contract as its serial
number). Concepts without a standard code are in vfrac's private coding scheme (99VFRAC).
Pseudonymous, or, given the source study, filed with the CT's study and its images as
evidence, like the other DICOM outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from explain.volumes import describe

SCHEME = "99VFRAC"
PROBABILITY = Code("P-MALIGNANCY", SCHEME, "Probability of malignancy")
THRESHOLD = Code("P-THRESHOLD", SCHEME, "Decision threshold")
SPREAD = Code("P-SPREAD", SCHEME, "Fold models' standard deviation")
CALL = Code("CALL", SCHEME, "Fracture call")
UNCERTAIN = Code("UNCERTAIN", SCHEME, "Radiologist must look")
CALLS = {"malignant": Code("MALIGNANT", SCHEME, "Malignant vertebral fracture"),
         "benign": Code("BENIGN", SCHEME, "Benign vertebral fracture")}
ANSWERS = {True: Code("373066001", "SCT", "Yes"), False: Code("373067005", "SCT", "No")}
UNITY = Code("1", "UCUM", "no units")


def contract_digest(model_contract: dict) -> str:
    """A short digest of the model's input contract, to tell two models' reports apart."""
    return hashlib.sha256(json.dumps(model_contract, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_prediction_sr(path: Path, prediction: dict, model_contract: dict, sources: list) -> Path:
    """The prediction as a Comprehensive 3D SR; `sources` are the CT headers it is evidence of (the CT's own
    for the study form, a pseudonymous one otherwise)."""
    import highdicom as hd  # (see explain.volumes.write_parametric_map)

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(), name="vfrac", manufacturer_name="vfrac", model_name=prediction["model"]["label"][:64],
        serial_number=contract_digest(model_contract))
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    uncertainty = prediction["uncertainty"]
    measurements = [hd.sr.Measurement(PROBABILITY, prediction["probability"], UNITY),
                    hd.sr.Measurement(THRESHOLD, prediction["threshold"], UNITY)]
    if uncertainty.get("spread_sd") is not None:
        measurements.append(hd.sr.Measurement(SPREAD, uncertainty["spread_sd"], UNITY))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="vertebral fracture"),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(CALL, CALLS[prediction["call"]]),
                                 hd.sr.QualitativeEvaluation(UNCERTAIN, ANSWERS[bool(uncertainty["reasons"])])])
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(evidence=sources, content=report[0], series_instance_uid=generate_uid(),
                                 series_number=9003, sop_instance_uid=generate_uid(), instance_number=1,
                                 manufacturer="vfrac", is_complete=True, is_final=False, is_verified=False)
    describe(sr, "vfrac result")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path)
    return Path(path)
