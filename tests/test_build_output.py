"""The build's own output stays readable: third-party noise is filtered, nothing else is."""
from __future__ import annotations

import logging

from bge_export.build.ort import quiet_quantizer


def test_quantizer_preprocessing_hint_is_filtered_and_other_warnings_are_not(caplog):
    with caplog.at_level(logging.WARNING):
        with quiet_quantizer():
            logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
            logging.warning("a real problem")
        logging.warning("Please consider to run pre-processing before quantization (outside the build)")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real problem", "Please consider to run pre-processing before quantization (outside the build)"]
