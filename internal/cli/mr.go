package cli

import (
	"fmt"
	"io"
)

func runMR(_ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "cairn mr: not built yet")
	return 1
}
