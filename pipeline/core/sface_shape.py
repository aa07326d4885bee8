"""The SFace teacher's block widths and the checks on a student's factored ranks (``model.pw_ranks``).

In ``pipeline.core``, not next to the network in `pipeline.model.inherit`, so that a bad ``model.pw_ranks`` fails
when the config is read (`pipeline.core.config.validate`), before any data is prepared; the network builder checks
the same when a saved student is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.errors import ConfigError

#: SFace's block widths (conv_2 .. conv_14, output channels); a block's input is the previous one's (the stem's 32).
SFACE_WIDTHS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def pw_widths(block: int) -> tuple[int, int]:
    """(input, output) channels of SFace block ``block``'s pointwise convolution (0-based, conv_2 = 0)."""
    return (32 if block == 0 else SFACE_WIDTHS[block - 1]), SFACE_WIDTHS[block]


def check_pw_ranks(pw_ranks: Sequence[int], drop_blocks: Sequence[int] = ()) -> None:
    """``pw_ranks``: empty, or one rank per SFace block (13; 0 = the full convolution). A rank must make the block
    cheaper (r * (C_in + C_out) < C_in * C_out), and a left-out block's must be 0.

    Raises:
        ConfigError: naming the block and the ranks it takes.
    """
    if not pw_ranks:
        return
    if len(pw_ranks) != len(SFACE_WIDTHS):
        raise ConfigError(f"model.pw_ranks needs one rank per SFace block ({len(SFACE_WIDTHS)}; 0 = full), got "
                          f"{len(pw_ranks)}: {list(pw_ranks)}")
    for i, r in enumerate(pw_ranks):
        cin, cout = pw_widths(i)
        most = (cin * cout - 1) // (cin + cout)
        if r < 0 or r > most:
            raise ConfigError(f"model.pw_ranks[{i}]={r}: block {i} ({cin} -> {cout} channels) takes a rank in "
                              f"[1, {most}] (fewer multiply-adds than the full convolution) or 0 (full)")
        if r and i in drop_blocks:
            raise ConfigError(f"model.pw_ranks[{i}]={r}: block {i} is left out (model.drop_blocks); its rank must be 0 "
                              "(model.pw_ranks=[] keeps every block at full rank)")
