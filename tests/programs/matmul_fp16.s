; y = x @ W: fp16 x [4,320], fp16 W [320,320] -> fp32 y [4,320], on MXM plane MXM0 (position 0).
; An fp16 vector is two byte planes, so every fp16 tensor takes two MEM slices that read in the
; same cycle onto a stream pair (W0/2 = W0,W1), and y (fp32) takes four slices and streams.
; The MXM at 0 reads WESTWARD streams; a read issued at t from position p is there at t + 4 + p.
; fp16 runs at 1/4 of the int8 rate: mxm.abc takes one vector every 4 cycles, so the x reads
; are spaced 4 cycles apart with `repeat 3, 4` (each repeat advances the address by 1).
.arch tsp-v1
.tensor W input fp16 [320,320] slices=MEM_W43,MEM_W42 addr=0
.tensor x input fp16 [4,320] slices=MEM_W41,MEM_W40 addr=0
.tensor y output fp32 [4,320] slices=MEM_W43,MEM_W42,MEM_W41,MEM_W40 addr=1024

.queue MEM_W42
@0   mem.read W1, 0, count=320        ; W high bytes: position 3, at the MXM 7..326
@380 mem.write E1, 1024, count=4      ; y byte 1 (E1 reaches position 3 one cycle after 2)

.queue MEM_W43
@1   mem.read W0, 0, count=320        ; W low bytes: position 2, at the MXM 7..326
@379 mem.write E0, 1024, count=4      ; y byte 0 (E0 from the MXM, at position 2 from 379)

.queue MEM_W40
@327 mem.read W3, 0, count=1          ; x high bytes: position 5, arrives 9 cycles later
     repeat 3, 4                      ; issues at 327, 331, 335, 339 -> at the MXM 336..348
@382 mem.write E3, 1024, count=4      ; y byte 3

.queue MEM_W41
@328 mem.read W2, 0, count=1          ; x low bytes: position 4, arrives 8 cycles later
     repeat 3, 4                      ; issues at 328, 332, 336, 340 -> at the MXM 336..348
@381 mem.write E2, 1024, count=4      ; y byte 2

.queue MXM0
@7   mxm.lw fp16, W0, 2, count=320    ; 2 streams per cycle = 1 fp16 row per cycle, 7..326
@327 mxm.iw                           ; installed at 327 + 8 = 335
@336 mxm.abc fp16, W2/2, count=4      ; x_i read at 336 + 4i, acc[i] committed at 360 + 4i
@373 mxm.acc fp32, E0/4, count=4      ; acc[0..3] read 373..376, on E0..E3 at 0 from 377
