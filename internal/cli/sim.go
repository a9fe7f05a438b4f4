package cli

import (
	"fmt"
	"io"
)

func runSim(_ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "cairn sim: not built yet")
	return 1
}
