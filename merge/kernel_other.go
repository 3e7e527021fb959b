//go:build !amd64 || purego

package merge

func hasAVX2() bool { return false }

func hasAVX512() bool { return false }

func accumulateAVX2(acc, L, R []float64, rows, cols, r int) { accumulateGo(acc, L, R, rows, cols, r) }

func hasF16C() bool { return false }

var fusedAVX2 [3][3]func(*fusedArgs) // none

var fusedVAVX2 [3]func(*fusedArgs)

var fusedAVX512 [3][3]func(*fusedArgs)

var fusedVAVX512 [3]func(*fusedArgs)

var roundAVX2 [3]func(*roundArgs)

var fusedSAVX2, fusedSAVX512 [3]func(*fusedArgs)
