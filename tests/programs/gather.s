; Embedding-row lookup with mem.gather: out[v] = table[idx[v]], per 16-lane tile.
; table int8 [64,320] sits in MEM_W0 (position 45) at addresses 0..63. The address map is an
; int16 [4,320] tensor (read as uint16 per lane): its low bytes in MEM_W1 (44), high bytes in
; MEM_W2 (43). Each gather vector reads the map as an eastward stream pair E0/2 at the table's
; slice, and tile k (lanes 16k..16k+15) of the result is tile k of SRAM[0 + map[v, 16k]]:
; with every lane of row v set to idx[v] that is the row lookup table[idx[v]]; the test also
; uses different rows per tile.
; A read issued at t is on the stream at its slice from t + 4 and moves one position per cycle.
.arch tsp-v1
.tensor table input int8 [64,320] slices=MEM_W0 addr=0
.tensor map input int16 [4,320] slices=MEM_W1,MEM_W2 addr=0
.tensor out output int8 [4,320] slices=MEM_W3 addr=0

.queue MEM_W2
@0  mem.read E1, 0, count=4          ; map high bytes: position 43, at 45 from 0+4+2 = 6
.queue MEM_W1
@1  mem.read E0, 0, count=4          ; map low bytes: position 44, at 45 from 1+4+1 = 6
.queue MEM_W0
@6  mem.gather W0, E0/2, 0, count=4  ; map read 6..9, rows on W0 at 45 from 6 + 6 = 12
.queue MEM_W3
@15 mem.write W0, 0, count=4         ; W0 reaches position 42 three cycles later: 15..18
