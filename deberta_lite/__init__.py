"""DeBERTa-lite: a DeBERTa-v2/v3 encoder for the Hugging Face ecosystem.

Importing the package registers every class with transformers' Auto classes, so `AutoModel.from_pretrained(dir)`
works in-process without `trust_remote_code`, and marks each class for remote code, so `save_pretrained` copies the
configuration and modeling files next to the weights for people who only have transformers.
"""

import transformers

from . import modeling_deberta_lite
from .configuration_deberta_lite import HEADS, DebertaLiteConfig, Head
from .modeling_deberta_lite import *  # noqa: F403  (DebertaLitePreTrainedModel and every class of HEADS)


__version__ = "0.2.0"

# Auto class -> DeBERTa-lite class, from the one table of heads.
AUTO_CLASSES = {
    getattr(transformers, head.auto_class): getattr(modeling_deberta_lite, name) for name, head in HEADS.items()
}

transformers.AutoConfig.register(DebertaLiteConfig.model_type, DebertaLiteConfig, exist_ok=True)
DebertaLiteConfig.register_for_auto_class()
for _auto_class, _model_class in AUTO_CLASSES.items():
    _auto_class.register(DebertaLiteConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_class.__name__)

__all__ = ["AUTO_CLASSES", "HEADS", "DebertaLiteConfig", "Head", *modeling_deberta_lite.__all__]
