"""Coreference: the loader of bioinstruct/tasks/coreference/coreference.yaml, shared with medication_status."""

from ..clinical_ie import load_clinical_ie

__all__ = ["load_clinical_ie"]
