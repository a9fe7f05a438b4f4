package worker

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/wire"
)

// The shuffle server serves only committed-looking map output paths,
// rejects malformed paths (no escaping the data directory), and answers
// 503 once frozen.
func TestShuffleServer(t *testing.T) {
	dir := t.TempDir()
	w, err := New(Config{Coordinator: "127.0.0.1:1", DataDir: dir, Registry: &job.Registry{}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.ln.Close()
	md := w.mapDir("job-0001", 3, 42)
	os.MkdirAll(md, 0o755)
	os.WriteFile(filepath.Join(md, partName(1)), []byte("data"), 0o644)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("no"), 0o644)
	srv := httptest.NewServer(w.srv.Handler)
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(wire.ShufflePath("job-0001", 3, 42, 1)); code != 200 || body != "data" {
		t.Fatalf("existing output: %d %q", code, body)
	}
	for _, p := range []string{
		wire.ShufflePath("job-0001", 3, 42, 0), // not written
		wire.ShufflePath("job-0001", 3, 41, 1), // another attempt
	} {
		if code, _ := get(p); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	for _, p := range []string{"/shuffle/..%2F..%2Fsecret/1/1/1", "/shuffle/job-0001/x/42/1", "/shuffle/job-1;rm/3/42/1"} {
		if code, body := get(p); code == 200 {
			t.Errorf("%s served %q", p, body)
		}
	}
	w.mu.Lock()
	w.frozen = true
	w.mu.Unlock()
	if code, _ := get(wire.ShufflePath("job-0001", 3, 42, 1)); code != 503 {
		t.Errorf("frozen worker answered %d", code)
	}
}
