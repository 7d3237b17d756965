"""The paper's numbers, the run model (grouped runs), the results table, figures and report."""
