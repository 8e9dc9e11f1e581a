"""Constants shared by the tiled renderer's Python side and its kernel sources (raw_kernels/smoe_tile.h,
smoe_tile_cpu.cpp, smoe_tile_cuda.cu): gating modes, the log-weight of a kernel without weight, the channel
limit and the layout of a backward row. Change them only together with the header.
"""
MODE_SMOE, MODE_RBF = 0, 1   # smoe_tile.h: normalized (softmax) gating / unnormalized RBF weights
NO_WEIGHT = -1e30            # smoe_tile.h: the log-weight of a kernel without weight (pi <= 0)
MAX_CHANNELS = 4             # smoe_tile.h: experts with 1 to 4 channels


def grad_slots(C: int, linear: bool) -> int:
    """Numbers in one backward row per (tile, kernel) pair: d mu (2), d chol (3), d log pi (1), d experts (C)
    and, for linear experts, d slopes (2 C)."""
    return 6 + C + (2 * C if linear else 0)
