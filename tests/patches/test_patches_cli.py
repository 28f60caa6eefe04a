"""SGLang's own argument parser accepts the plugin's name once registered, and only then."""

import pytest

pytest.importorskip("sglang", reason="sglang is not installed (bash .ci/install.sh installs it)")
pytestmark = pytest.mark.sglang


def test_unregistered_name_is_rejected(sglang_registries, sglang_parser, capsys):
    with pytest.raises(SystemExit) as exc:
        sglang_parser().parse_args(["--model-path", "m", "--attention-backend", "kvprefetch"])
    assert exc.value.code == 2
    assert "invalid choice: 'kvprefetch'" in capsys.readouterr().err


def test_attention_backend_accepted(sglang_registries, sglang_parser):
    from kvprefetch.patches import apply

    apply()
    args = sglang_parser().parse_args(["--model-path", "m", "--attention-backend", "kvprefetch"])
    assert args.attention_backend == "kvprefetch"


def test_split_prefill_decode_backends_accepted(sglang_registries, sglang_parser):
    from sglang.srt.server_args import ServerArgs

    from kvprefetch.patches import apply

    apply()
    args = sglang_parser().parse_args(
        [
            "--model-path", "m",
            "--decode-attention-backend", "kvprefetch",
            "--prefill-attention-backend", "flashinfer",
        ]
    )
    assert (args.prefill_attention_backend, args.decode_attention_backend) == ("flashinfer", "kvprefetch")
    # SGLang's own (prefill, decode) resolution, as the model runner uses it.
    assert ServerArgs.get_attention_backends(args) == ("flashinfer", "kvprefetch")


def test_unknown_name_still_rejected(sglang_registries, sglang_parser, capsys):
    from kvprefetch.patches import apply

    apply()
    parser = sglang_parser()
    for flag in ("--attention-backend", "--decode-attention-backend", "--prefill-attention-backend"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--model-path", "m", flag, "no_such_backend"])
        assert exc.value.code == 2
        assert "invalid choice: 'no_such_backend'" in capsys.readouterr().err
