"""Images in: DICOM read (de-identification) and write, the importers of public datasets,
ingest, pseudonyms, and the synthetic chest X-ray generator. Imports cxrkit.core only."""
