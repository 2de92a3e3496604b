"""Answer one multiple-choice question about an image and/or a sound (``mm-adapter demo``).

Without an adapter (or with a text-only one) the image is checked but ignored, and the answer says so.
Bad input (an image that is not one, truncated, too large or not a regular file, fewer than 2
choices, a question, context or option over ``MAX_TEXT_CHARS`` characters, an adapter whose image
encoder cannot be built) is one ``MMAdapterError`` line, raised before the model is loaded; a
prompt longer than the model's context is refused once the model (and so its context) is known.
"""

from __future__ import annotations

import sys

from mm_adapter.demo.predictor import Prediction, Predictor, check_audio, check_image, check_question
from mm_adapter.jobs.configs.answering import DemoConfig, ServeConfig
from mm_adapter.jobs.runtime import precision_line, prepare


def load_predictor(config: DemoConfig | ServeConfig) -> Predictor:
    """The predictor of a demo or serve config: base, adapter, format, device, dtype, autocast."""
    device = prepare(config.model)
    predictor = Predictor.load(config.model.base, config.adapter, device, config.format, config.model.dtype,
                               config.bf16, getattr(config, "audio_encoder", None))
    print(predictor.describe(), file=sys.stderr)
    print(precision_line(predictor.model, config.bf16, device), file=sys.stderr)
    return predictor


def demo(config: DemoConfig) -> Prediction:
    check_question(config.question, config.choices, config.context)  # bad input fails before the model is loaded
    check_image(config.image)
    check_audio(config.audio)
    return load_predictor(config).predict(config.image, config.question, config.choices, config.context,
                                          audio=config.audio)
