"""What the report and stats stages share: reading evaluation results (results), table
cells (cells), tables as text (tables), the report's comparisons and pages (comparisons,
pages), the dataset card (card) and every figure (plots)."""
