; A 16x320 int8 block through the 16x16 corner turn of SXM_W (position 1): sxm.transpose reads
; 16 streams in one cycle and writes 16, so the 16 rows must reach the SXM in the same cycle.
; A MEM slice reads one stream per cycle, so row j is its own tensor a<j> in slice MEM_W<43-j>
; (position 2 + j) and goes out on westward stream W<j>. A read issued at t is on the stream at
; its slice at t + 4 and reaches position 1 at t + 4 + (1 + j): issuing row j at 15 - j brings
; all 16 rows to the SXM at cycle 20.
; Result: out stream E<j>, lane 16k+i = in stream i, lane 16k+j (each 16x16 tile transposed),
; committed at 20 + sxm_transpose (8) = 28 at position 1; eastward E<j> reaches position 2 + j
; at 29 + j, where row j of the result (tensor b<j>, address 1 of the same slice) is written.
.arch tsp-v1
.tensor a0 input int8 [1,320] slices=MEM_W43 addr=0
.tensor a1 input int8 [1,320] slices=MEM_W42 addr=0
.tensor a2 input int8 [1,320] slices=MEM_W41 addr=0
.tensor a3 input int8 [1,320] slices=MEM_W40 addr=0
.tensor a4 input int8 [1,320] slices=MEM_W39 addr=0
.tensor a5 input int8 [1,320] slices=MEM_W38 addr=0
.tensor a6 input int8 [1,320] slices=MEM_W37 addr=0
.tensor a7 input int8 [1,320] slices=MEM_W36 addr=0
.tensor a8 input int8 [1,320] slices=MEM_W35 addr=0
.tensor a9 input int8 [1,320] slices=MEM_W34 addr=0
.tensor a10 input int8 [1,320] slices=MEM_W33 addr=0
.tensor a11 input int8 [1,320] slices=MEM_W32 addr=0
.tensor a12 input int8 [1,320] slices=MEM_W31 addr=0
.tensor a13 input int8 [1,320] slices=MEM_W30 addr=0
.tensor a14 input int8 [1,320] slices=MEM_W29 addr=0
.tensor a15 input int8 [1,320] slices=MEM_W28 addr=0
.tensor b0 output int8 [1,320] slices=MEM_W43 addr=1
.tensor b1 output int8 [1,320] slices=MEM_W42 addr=1
.tensor b2 output int8 [1,320] slices=MEM_W41 addr=1
.tensor b3 output int8 [1,320] slices=MEM_W40 addr=1
.tensor b4 output int8 [1,320] slices=MEM_W39 addr=1
.tensor b5 output int8 [1,320] slices=MEM_W38 addr=1
.tensor b6 output int8 [1,320] slices=MEM_W37 addr=1
.tensor b7 output int8 [1,320] slices=MEM_W36 addr=1
.tensor b8 output int8 [1,320] slices=MEM_W35 addr=1
.tensor b9 output int8 [1,320] slices=MEM_W34 addr=1
.tensor b10 output int8 [1,320] slices=MEM_W33 addr=1
.tensor b11 output int8 [1,320] slices=MEM_W32 addr=1
.tensor b12 output int8 [1,320] slices=MEM_W31 addr=1
.tensor b13 output int8 [1,320] slices=MEM_W30 addr=1
.tensor b14 output int8 [1,320] slices=MEM_W29 addr=1
.tensor b15 output int8 [1,320] slices=MEM_W28 addr=1

.queue MEM_W43
@15  mem.read W0, 0     ; position 2: at the SXM at 15+4+1 = 20
@29  mem.write E0, 1    ; E0 from the SXM (28 at 1) reaches position 2 at 29

.queue MEM_W42
@14  mem.read W1, 0     ; position 3: at the SXM at 14+4+2 = 20
@30  mem.write E1, 1    ; E1 from the SXM (28 at 1) reaches position 3 at 30

.queue MEM_W41
@13  mem.read W2, 0     ; position 4: at the SXM at 13+4+3 = 20
@31  mem.write E2, 1    ; E2 from the SXM (28 at 1) reaches position 4 at 31

.queue MEM_W40
@12  mem.read W3, 0     ; position 5: at the SXM at 12+4+4 = 20
@32  mem.write E3, 1    ; E3 from the SXM (28 at 1) reaches position 5 at 32

.queue MEM_W39
@11  mem.read W4, 0     ; position 6: at the SXM at 11+4+5 = 20
@33  mem.write E4, 1    ; E4 from the SXM (28 at 1) reaches position 6 at 33

.queue MEM_W38
@10  mem.read W5, 0     ; position 7: at the SXM at 10+4+6 = 20
@34  mem.write E5, 1    ; E5 from the SXM (28 at 1) reaches position 7 at 34

.queue MEM_W37
@9   mem.read W6, 0     ; position 8: at the SXM at 9+4+7 = 20
@35  mem.write E6, 1    ; E6 from the SXM (28 at 1) reaches position 8 at 35

.queue MEM_W36
@8   mem.read W7, 0     ; position 9: at the SXM at 8+4+8 = 20
@36  mem.write E7, 1    ; E7 from the SXM (28 at 1) reaches position 9 at 36

.queue MEM_W35
@7   mem.read W8, 0     ; position 10: at the SXM at 7+4+9 = 20
@37  mem.write E8, 1    ; E8 from the SXM (28 at 1) reaches position 10 at 37

.queue MEM_W34
@6   mem.read W9, 0     ; position 11: at the SXM at 6+4+10 = 20
@38  mem.write E9, 1    ; E9 from the SXM (28 at 1) reaches position 11 at 38

.queue MEM_W33
@5   mem.read W10, 0     ; position 12: at the SXM at 5+4+11 = 20
@39  mem.write E10, 1    ; E10 from the SXM (28 at 1) reaches position 12 at 39

.queue MEM_W32
@4   mem.read W11, 0     ; position 13: at the SXM at 4+4+12 = 20
@40  mem.write E11, 1    ; E11 from the SXM (28 at 1) reaches position 13 at 40

.queue MEM_W31
@3   mem.read W12, 0     ; position 14: at the SXM at 3+4+13 = 20
@41  mem.write E12, 1    ; E12 from the SXM (28 at 1) reaches position 14 at 41

.queue MEM_W30
@2   mem.read W13, 0     ; position 15: at the SXM at 2+4+14 = 20
@42  mem.write E13, 1    ; E13 from the SXM (28 at 1) reaches position 15 at 42

.queue MEM_W29
@1   mem.read W14, 0     ; position 16: at the SXM at 1+4+15 = 20
@43  mem.write E14, 1    ; E14 from the SXM (28 at 1) reaches position 16 at 43

.queue MEM_W28
@0   mem.read W15, 0     ; position 17: at the SXM at 0+4+16 = 20
@44  mem.write E15, 1    ; E15 from the SXM (28 at 1) reaches position 17 at 44

.queue SXM_W
@20 sxm.transpose E0, W0, count=1, aux=1   ; W0..W15 in at 20, E0..E15 out at 28
