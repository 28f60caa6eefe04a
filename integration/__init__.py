"""kvprefetch's SGLang attention backend ("kvprefetch").

Modules (one idea each):
  backend       create_backend(model_runner): the SGLang adapter (imports sglang)
  decoder       kernel wrappers + paged metadata + plan/run, without sglang
  page_table    req_to_token -> kv_indptr / kv_indices / kv_last_page_len (Triton + torch)
  refusal       what the backend refuses at start-up, and why
  roles         which phase(s) SGLang asked us to serve
  config        KVPREFETCH_* environment knobs
  model_folder  write a servable model folder (config + tokenizer [+ random weights])

Importing this package does not import sglang; ``create_backend`` is loaded on first use.
"""


def create_backend(model_runner):
    from .backend import create_backend as _create

    return _create(model_runner)


__all__ = ["create_backend"]
