package mrtest

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every MapReduce package says what it is for in a package comment.
func TestPackagesHaveDocComments(t *testing.T) {
	var dirs []string
	for _, root := range []string{"..", "../../../mapreduce"} {
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	for _, dir := range dirs {
		pkgs, err := parser.ParseDir(token.NewFileSet(), dir, func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			t.Fatal(err)
		}
		for name, p := range pkgs {
			ok := false
			for _, f := range p.Files {
				if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package "+name+" ") {
					ok = true
				}
			}
			if !ok {
				t.Errorf("package %s in %s has no \"// Package %s ...\" comment", name, dir, name)
			}
		}
	}
	if len(dirs) < 10 {
		t.Fatalf("found only %d package directories", len(dirs))
	}
}
