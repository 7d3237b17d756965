"""The paper's numbers, the run model (grouped runs), the results table, the figures and the report."""
