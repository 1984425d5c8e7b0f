"""The Streamlit report app (``testprio report``): layout only, data from testprio.report.data."""
