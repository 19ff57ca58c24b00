"""DeBERTa-lite: a DeBERTa-v2/v3 encoder for the Hugging Face ecosystem.

Importing the package registers every class with transformers' Auto classes, so `AutoModel.from_pretrained(dir)`
works in-process without `trust_remote_code`, and marks each class for remote code, so `save_pretrained` copies the
configuration and modeling files next to the weights for people who only have transformers.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_deberta_lite import DebertaLiteConfig
from .modeling_deberta_lite import (
    DebertaLiteForMaskedLM,
    DebertaLiteForMultipleChoice,
    DebertaLiteForQuestionAnswering,
    DebertaLiteForSequenceClassification,
    DebertaLiteForTokenClassification,
    DebertaLiteModel,
    DebertaLitePreTrainedModel,
)


__version__ = "0.1.0"

AUTO_CLASSES = {
    AutoModel: DebertaLiteModel,
    AutoModelForMaskedLM: DebertaLiteForMaskedLM,
    AutoModelForSequenceClassification: DebertaLiteForSequenceClassification,
    AutoModelForTokenClassification: DebertaLiteForTokenClassification,
    AutoModelForQuestionAnswering: DebertaLiteForQuestionAnswering,
    AutoModelForMultipleChoice: DebertaLiteForMultipleChoice,
}

AutoConfig.register(DebertaLiteConfig.model_type, DebertaLiteConfig, exist_ok=True)
DebertaLiteConfig.register_for_auto_class()
for _auto_class, _model_class in AUTO_CLASSES.items():
    _auto_class.register(DebertaLiteConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_class.__name__)

__all__ = [
    "AUTO_CLASSES",
    "DebertaLiteConfig",
    "DebertaLiteForMaskedLM",
    "DebertaLiteForMultipleChoice",
    "DebertaLiteForQuestionAnswering",
    "DebertaLiteForSequenceClassification",
    "DebertaLiteForTokenClassification",
    "DebertaLiteModel",
    "DebertaLitePreTrainedModel",
]
