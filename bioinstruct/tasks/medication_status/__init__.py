"""Medication status: the loader of bioinstruct/tasks/medication_status/medication_status.yaml, shared with coreference."""

from ..clinical_ie import load_clinical_ie

__all__ = ["load_clinical_ie"]
