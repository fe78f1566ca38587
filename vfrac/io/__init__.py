"""Reading what hospitals store: cohort files, DICOM series, NIfTI, NRRD, DICOM SEG and RTSTRUCT, checked before use."""
