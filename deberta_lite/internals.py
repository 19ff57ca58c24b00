"""The two private transformers names DeBERTa-lite relies on, each behind the functions that use it.

transformers gives models no public way to read the attention kernel a user asked for, nor to know whether
`capture_outputs` is collecting layer outputs or to run a layer outside its scope in a way torch.compile can trace.
Both names are reached only here: a transformers release that moves either fails at import, in this file, with a
message that names it.

This file is copied next to the weights with the modeling file that imports it (remote code).
"""

from contextlib import contextmanager

import transformers


try:
    from transformers.utils.output_capturing import _active_collector
except ImportError as error:  # moved or renamed in a newer transformers
    raise ImportError(
        f"DeBERTa-lite's enhanced mask decoder needs transformers.utils.output_capturing._active_collector, which "
        f"transformers {transformers.__version__} does not have; install a transformers 5.x release that has it"
    ) from error


def attention_implementation(config) -> str:
    """The attention kernel asked for with `attn_implementation=` (transformers keeps it in a private field)."""
    return config._attn_implementation


def capturing_layer_outputs() -> bool:
    """Whether the running forward collects hidden states or attentions (`output_hidden_states` and the like): they
    are captured from each layer's output, which must then keep the padded (batch, sequence) layout."""
    return bool(_active_collector.get())


@contextmanager
def outside_output_capture():
    """Run modules whose output-capturing hooks must stay inert, traceable by torch.compile.

    The enhanced mask decoder calls the last encoder layer again after the encoder's `capture_outputs` scope has
    closed; the layer's hooks still fire. With no collector they would read a ContextVar, which torch.compile cannot
    trace; an empty collector keeps them just as inert.
    """
    token = _active_collector.set({})
    try:
        yield
    finally:
        _active_collector.reset(token)
