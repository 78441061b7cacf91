; Two chips: chip 0 sends 2 vectors over C2C link 0; they arrive on chip 1's link 6
; (arch.link_peer(2, 0, 0) == (1, 6) on tsp-v1), which writes them to its SRAM.
; Both links sit at position 1 (C2C0..7 share SXM_W's position).
; A link moves link_bytes_per_cycle = 14 GB/s / 0.9 GHz = 15.6 bytes per cycle, so one
; 320-byte vector takes ser = ceil(320 / 15.6) = 21 cycles: c2c.send reads vector i at
; issue + 21i, and it is in chip 1's link buffer at issue + 21i + c2c_send (4) + 21 + hop (225).
.arch tsp-v1
.chips 2

.chip 0
.tensor x input int8 [2,320] slices=MEM_W43 addr=0
.queue MEM_W43
@0 mem.read W0, 0                ; position 2: on W0 at 2 from 4, at the link (1) at 5
   repeat 1, 21                  ; x[1] read at 21: at the link at 26 = 5 + 21
.queue C2C0
@5 c2c.send W0, count=2          ; reads 5 and 26; arrival 5 + 21i + 4 + 21 + 225 = 255 + 21i

.chip 1
.tensor y output int8 [2,320] slices=MEM_W43 addr=0
.queue C2C6
@276 c2c.recv E0, count=2        ; reads 276 > 255 and 277 > 276; on E0 at 1 from 280
.queue MEM_W43
@281 mem.write E0, 0, count=2    ; E0 reaches position 2 one cycle later
