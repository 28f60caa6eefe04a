"""Errors the kernel layer raises."""


class KernelUnavailableError(RuntimeError):
    """The decode kernel cannot run here: no CUDA GPU, a GPU other than sm_90, no nvcc, or a failed build.

    The message names what is missing. The SGLang backend catches this and falls back to Triton decode.
    """
