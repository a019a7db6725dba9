"""Reports: the plot setup and colours, HTML snippets, and the provenance block of each report.
"""
