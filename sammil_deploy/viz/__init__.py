"""Pictures for people: tissue/patch previews, attention heatmaps and the cohort report page (report.html)."""
