"""Pictures for people: tissue/patch previews (CLAM-style mask and stitch images)."""
