"""Python-backend model files for Triton; each module is copied as `<model>/1/model.py` on export."""
