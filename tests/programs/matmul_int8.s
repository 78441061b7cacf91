; y = x @ W: int8 x [8,640], int8 W [640,320] -> int32 y [8,320], on MXM plane MXM0 (position 0).
; K = 640 is two tiles of 320: tile 0 = W rows 0..319, tile 1 = W rows 320..639. Both go through
; the same plane, one after the other (the weight buffer is double-buffered: tile 1 loads while
; tile 0 is installed), and tile 1 accumulates (flag=1) into the accumulators tile 0 wrote.
;
; Placement: W in MEM_W43 (position 2), x in MEM_W42 (position 3); the MXM at 0 reads WESTWARD
; streams. A read issued at t is on the stream at its slice from t + mem_read (4) and moves one
; position per cycle, so from position p it reaches the MXM at t + 4 + p.
; x rows take 2 vectors each ("rows" layout): x[r, 0:320] at address 2r, x[r, 320:640] at 2r+1,
; so tile 0 of the activations is addresses 0,2,..,14 (stride 2) and tile 1 is 1,3,..,15.
.arch tsp-v1
.tensor W input int8 [640,320] slices=MEM_W43 addr=0
.tensor x input int8 [8,640] slices=MEM_W42 addr=0
.tensor y output int32 [8,320] slices=MEM_W43,MEM_W42,MEM_W41,MEM_W40 addr=1024

.queue MEM_W43
@0   mem.read W0, 0, count=320        ; W tile 0: on W0 at 2 from 4, at the MXM cycles 6..325
@321 mem.read W0, 320, count=320      ; W tile 1: at the MXM cycles 327..646
@694 mem.write E0, 1024, count=8      ; byte 0 of y (E0 from the MXM, at position 2 from 694)

.queue MEM_W42
@328 mem.read W1, 0, count=8, stride=2  ; x tile 0: at the MXM cycles 335..342
@649 mem.read W1, 1, count=8, stride=2  ; x tile 1: at the MXM cycles 656..663
@695 mem.write E1, 1024, count=8      ; byte 1 of y (position 3: one cycle after position 2)

.queue MEM_W41
@696 mem.write E2, 1024, count=8      ; byte 2 of y

.queue MEM_W40
@697 mem.write E3, 1024, count=8      ; byte 3 of y

.queue MXM0
@6   mxm.lw int8, W0, 1, count=320, addr=0   ; one weight row per cycle, rows 0..319 (6..325)
@326 mxm.iw                                  ; buffer -> array, committed at 326 + 8 = 334
@327 mxm.lw int8, W0, 1, count=320, addr=0   ; tile 1 into the (now free) buffer, 327..646
@335 mxm.abc int8, W1, count=8, addr=0, flag=0  ; acc[0..7] = x tile 0 @ W tile 0 (335..342)
@647 mxm.iw                                  ; tile 1 installed at 655 (tile 0's ABC read by 342)
@656 mxm.abc int8, W1, count=8, addr=0, flag=1  ; acc[i] += x tile 1 @ W tile 1, committed
                                             ; at 656 + i + 24 = 680..687
@688 mxm.acc int32, E0/4, count=8, addr=0    ; acc[0..7] read 688..695, on E0..E3 at 0 from 692
