# The JBD BMS protocol: framing, reassembly and register decoders. Pure, no I/O.
from jbd.frame import (
    MAX_FRAME,
    REG_BASIC,
    REG_CELLS,
    REG_NAME,
    STATUS_NAMES,
    ChecksumError,
    FrameAssembler,
    FrameError,
    LengthError,
    StatusError,
    check_frame,
    checksum,
    parse_frame,
    read_request,
    write_request,
)
from jbd.decode import (
    ALARM_FLAGS,
    PROTECTION_FLAGS,
    decode,
    decode_basic,
    decode_cells,
    decode_name,
    flag_names,
)
