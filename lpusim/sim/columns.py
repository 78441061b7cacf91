"""The columns of a decoded program (one row per field, one column per issued instruction)."""

# Per-instruction integer columns, in this order: Decoded.cols is an (NCOL, N) int64 array.
COLUMNS = (
    "chip", "qid", "unit", "uidx", "pos", "op", "t0", "count", "interval", "lat",
    "dtype", "dtype2", "dst", "dst_dir", "dst_g", "src", "src_dir", "src_g",
    "src2", "src2_dir", "src2_g", "addr", "stride", "imm", "aux", "flag", "ops",
    "sidx", "rep", "link_base", "nops", "g_in", "g_out",
    # the streams an instruction reads (two groups) and writes, as (direction, first stream,
    # number of streams, step between streams); n = 0 where there is none
    "r1_dir", "r1_s", "r1_n", "r1_step", "r2_dir", "r2_s", "r2_n", "w_dir", "w_s", "w_n", "w_step",
    # the element type of a VXM op's B operand (a chain's after a cvt link: dtype2)
    "b_dt",
)  # fmt: skip
C = {name: i for i, name in enumerate(COLUMNS)}
NCOL = len(COLUMNS)
