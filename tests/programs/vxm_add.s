; Elementwise z = x + y on 4 vectors of 320 int8 (wrapping), through the VXM.
; x sits in MEM_W0 (position 45), y in MEM_W1 (44); the VXM is at 46.
; A read issued at t leaves its slice at t + mem_read (4) and moves one position per cycle.
.arch tsp-v1
.tensor x input int8 [4,320] slices=MEM_W0 addr=0
.tensor y input int8 [4,320] slices=MEM_W1 addr=0
.tensor z output int8 [4,320] slices=MEM_W2 addr=0
.queue MEM_W1
@0 mem.read E1, 0, count=4        ; on E1 at 44 from cycle 4, at the VXM from cycle 6
.queue MEM_W0
@1 mem.read E0, 0, count=4        ; on E0 at 45 from cycle 5, at the VXM from cycle 6
.queue VXM0
@6 vxm.add int8, W0, E0, E1, count=4   ; result on W0 at 46 from cycle 8
.queue MEM_W2
@11 mem.write W0, 0, count=4      ; W0 reaches 43 three cycles later
