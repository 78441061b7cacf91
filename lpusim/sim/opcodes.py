"""Integer constants the kernels dispatch on, derived from the ISA table (never spelled by hand)."""

from __future__ import annotations

from isa.dtypes import DTYPE_BY_NAME
from isa.table import ALU_BY_NAME, BY_MNEMONIC, LATENCY_CLASSES

UNIT_CODES = {"ICU": 0, "MEM": 1, "VXM": 2, "MXM": 3, "SXM": 4, "C2C": 5}


def _op(mnemonic: str) -> int:
    return BY_MNEMONIC[mnemonic].opcode


OP_NOP = _op("nop")
OP_REPEAT = _op("repeat")
OP_SYNC = _op("sync")
OP_NOTIFY = _op("notify")
OP_MEM_READ = _op("mem.read")
OP_MEM_WRITE = _op("mem.write")
OP_MEM_GATHER = _op("mem.gather")
OP_MEM_SCATTER = _op("mem.scatter")
OP_MXM_LW = _op("mxm.lw")
OP_MXM_IW = _op("mxm.iw")
OP_MXM_ABC = _op("mxm.abc")
OP_MXM_ACC = _op("mxm.acc")
OP_SXM_SHIFT = _op("sxm.shift")
OP_SXM_ROTATE = _op("sxm.rotate")
OP_SXM_PERMUTE = _op("sxm.permute")
OP_SXM_DISTRIBUTE = _op("sxm.distribute")
OP_SXM_TRANSPOSE = _op("sxm.transpose")
OP_C2C_SEND = _op("c2c.send")
OP_C2C_RECV = _op("c2c.recv")
OP_C2C_DESKEW = _op("c2c.deskew")
OP_VXM_CVT = _op("vxm.cvt")
OP_VXM_CHAIN = _op("vxm.chain")
# vxm.<alu> opcodes are VXM_ALU_BASE + ALU op code
VXM_ALU_BASE = BY_MNEMONIC["vxm.copy"].opcode - ALU_BY_NAME["copy"].code

ALU = {name: a.code for name, a in ALU_BY_NAME.items()}
DT = {name: d.code for name, d in DTYPE_BY_NAME.items()}
DT_INT8, DT_INT16, DT_INT32 = DT["int8"], DT["int16"], DT["int32"]
DT_FP16, DT_BF16, DT_FP32 = DT["fp16"], DT["bf16"], DT["fp32"]
DT_FP8E4M3, DT_FP8E5M2 = DT["fp8_e4m3"], DT["fp8_e5m2"]
LAT_INDEX = {name: i for i, name in enumerate(LATENCY_CLASSES)}

# hazard kinds reported by the kernels (index -> name used in HazardError.kind)
HAZARDS = (
    "none",
    "stream-conflict",  # two producers on one stream at one place and time
    "stream-empty",  # a consumer found no value on its stream where and when it read
    "mem-port",  # two reads, two writes, or a read and a write on one bank, in one cycle
    "sram-bounds",  # an address outside the slice
    "mxm-unloaded",  # install of a weight buffer that was never loaded
    "mxm-dtype",  # activations of another type than the installed weights / accumulators
    "mxm-acc-conflict",  # two results into one accumulator in one cycle
    "alu-busy",  # a VXM ALU used by two instructions in one cycle
    "link-busy",  # a link used by two transfers at once
    "recv-unmatched",  # a receive with no matching send
    "recv-early",  # a receive before the vector arrived
    "mxm-install-busy",  # an install while the plane's previous install is still in flight
)
HZ = {name: i for i, name in enumerate(HAZARDS)}
