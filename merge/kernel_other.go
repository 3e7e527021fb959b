//go:build !amd64 || purego

package merge

func hasAVX2() bool { return false }

func hasAVX512() bool { return false }

func accumulateAVX2(acc, L, R []float64, rows, cols, r int) { accumulateGo(acc, L, R, rows, cols, r) }

func hasF16C() bool { return false }

// No assembly here: the tables are empty, and the kernels named for them are refused.
var (
	fusedAVX2, fusedAVX512                             [3][3]func(*fusedArgs)
	fusedVAVX2, fusedVAVX512, fusedSAVX2, fusedSAVX512 [3]func(*fusedArgs)
	roundAVX2                                          [3]func(*roundArgs)
)
