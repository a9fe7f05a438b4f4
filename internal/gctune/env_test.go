package gctune

import "os"

func unsetenv(k string) error { return os.Unsetenv(k) }
