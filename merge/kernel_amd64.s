//go:build amd64 && !purego

#include "textflag.h"

// func avx2Block(acc, L, R *float64, rows, cols, r, width int)
//
// For each strip of 16 columns j0 (4 vectors of 4 float64), for each pair of rows o,
// o+1: eight accumulators start at -0 and take, for k = 0, 1, ..., r-1 in order,
// acc = fma(L[o, k], R[k, j0:j0+16], acc); then they are stored. An odd last row runs
// the same loop alone. Each element is the same fused-multiply-add chain as the Go
// kernel's, so the bits are the same.
//
// Registers: DI acc, SI L, DX R, R8 rows, R9 cols (the row stride), R10 r, R11 width,
// R12 j0, R13 o, R14 k, AX R pointer, BX L row o, CX L row o+1, R15 the acc pointer.
TEXT ·avx2Block(SB), NOSPLIT, $0-56
	MOVQ acc+0(FP), DI
	MOVQ L+8(FP), SI
	MOVQ R+16(FP), DX
	MOVQ rows+24(FP), R8
	MOVQ cols+32(FP), R9
	MOVQ r+40(FP), R10
	MOVQ width+48(FP), R11

	// Y15 = -0.0 in every lane: all ones shifted left by 63.
	VPCMPEQQ Y15, Y15, Y15
	VPSLLQ   $63, Y15, Y15

	XORQ R12, R12

strip:
	CMPQ R12, R11
	JGE  done
	XORQ R13, R13

pair:
	LEAQ 1(R13), AX
	CMPQ AX, R8
	JGE  single

	VMOVAPD Y15, Y0
	VMOVAPD Y15, Y1
	VMOVAPD Y15, Y2
	VMOVAPD Y15, Y3
	VMOVAPD Y15, Y4
	VMOVAPD Y15, Y5
	VMOVAPD Y15, Y6
	VMOVAPD Y15, Y7

	// BX = &L[o*r], CX = &L[(o+1)*r]
	MOVQ R13, BX
	IMULQ R10, BX
	LEAQ (SI)(BX*8), BX
	LEAQ (BX)(R10*8), CX
	// AX = &R[j0]
	LEAQ (DX)(R12*8), AX
	XORQ R14, R14

pairk:
	CMPQ R14, R10
	JGE  pairstore
	VMOVUPD      (AX), Y8
	VMOVUPD      32(AX), Y9
	VMOVUPD      64(AX), Y10
	VMOVUPD      96(AX), Y11
	VBROADCASTSD (BX)(R14*8), Y12
	VBROADCASTSD (CX)(R14*8), Y13
	VFMADD231PD  Y8, Y12, Y0
	VFMADD231PD  Y9, Y12, Y1
	VFMADD231PD  Y10, Y12, Y2
	VFMADD231PD  Y11, Y12, Y3
	VFMADD231PD  Y8, Y13, Y4
	VFMADD231PD  Y9, Y13, Y5
	VFMADD231PD  Y10, Y13, Y6
	VFMADD231PD  Y11, Y13, Y7
	LEAQ         (AX)(R9*8), AX
	INCQ         R14
	JMP          pairk

pairstore:
	// R15 = &acc[o*cols + j0]
	MOVQ    R13, R15
	IMULQ   R9, R15
	ADDQ    R12, R15
	LEAQ    (DI)(R15*8), R15
	VMOVUPD Y0, (R15)
	VMOVUPD Y1, 32(R15)
	VMOVUPD Y2, 64(R15)
	VMOVUPD Y3, 96(R15)
	LEAQ    (R15)(R9*8), R15
	VMOVUPD Y4, (R15)
	VMOVUPD Y5, 32(R15)
	VMOVUPD Y6, 64(R15)
	VMOVUPD Y7, 96(R15)
	ADDQ    $2, R13
	JMP     pair

single:
	CMPQ R13, R8
	JGE  nextstrip
	VMOVAPD Y15, Y0
	VMOVAPD Y15, Y1
	VMOVAPD Y15, Y2
	VMOVAPD Y15, Y3
	MOVQ    R13, BX
	IMULQ   R10, BX
	LEAQ    (SI)(BX*8), BX
	LEAQ    (DX)(R12*8), AX
	XORQ    R14, R14

singlek:
	CMPQ R14, R10
	JGE  singlestore
	VBROADCASTSD (BX)(R14*8), Y12
	VFMADD231PD  (AX), Y12, Y0
	VFMADD231PD  32(AX), Y12, Y1
	VFMADD231PD  64(AX), Y12, Y2
	VFMADD231PD  96(AX), Y12, Y3
	LEAQ         (AX)(R9*8), AX
	INCQ         R14
	JMP          singlek

singlestore:
	MOVQ    R13, R15
	IMULQ   R9, R15
	ADDQ    R12, R15
	LEAQ    (DI)(R15*8), R15
	VMOVUPD Y0, (R15)
	VMOVUPD Y1, 32(R15)
	VMOVUPD Y2, 64(R15)
	VMOVUPD Y3, 96(R15)

nextstrip:
	ADDQ $16, R12
	JMP  strip

done:
	VZEROUPPER
	RET
