package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// identity is stored in the data dir when it is created, so a server
// refuses a data dir that belongs to another member or cluster.
type identity struct {
	ClusterID uint64 `json:"cluster_id"`
	MemberID  uint64 `json:"member_id"`
	Name      string `json:"name"`
	Token     string `json:"cluster_token"`
}

const identityFile = "member.json"

// readIdentity returns the identity stored in the data dir, or nil if the
// data dir has none yet.
func readIdentity(path string) (*identity, error) {
	b, err := os.ReadFile(filepath.Join(path, identityFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read %s in data dir %s: %w", identityFile, path, err)
	}
	var id identity
	if err := json.Unmarshal(b, &id); err != nil || id.MemberID == 0 {
		return nil, fmt.Errorf("data dir %s is corrupt: %s does not parse", path, filepath.Join(path, identityFile))
	}
	return &id, nil
}

// dataDir is an opened, locked data directory.
type dataDir struct {
	path  string
	lock  *os.File
	want  identity
	fresh bool // no identity existed: create writes it
}

// openDataDir creates the data dir if needed, takes its lock and checks
// that it belongs to want. It writes nothing else: a fresh data dir gets
// its identity only from create, once the member has its ports, so a start
// refused for a busy port leaves no identity behind that would then refuse
// a corrected retry.
func openDataDir(path string, want identity) (*dataDir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create data dir %s: %w", path, err)
	}
	lock, err := os.OpenFile(filepath.Join(path, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot open lock file in data dir %s: %w", path, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("data dir %s is in use by another cairn process", path)
	}
	d := &dataDir{path: path, lock: lock, want: want}
	b, err := os.ReadFile(filepath.Join(path, identityFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if entries, _ := os.ReadDir(filepath.Join(path, "raft")); len(entries) > 0 {
			d.close()
			return nil, fmt.Errorf("data dir %s has Raft data but no %s; refusing to guess whose it is", path, identityFile)
		}
		d.fresh = true
		return d, nil
	case err != nil:
		d.close()
		return nil, fmt.Errorf("cannot read %s in data dir %s: %w", identityFile, path, err)
	}
	var have identity
	if err := json.Unmarshal(b, &have); err != nil {
		d.close()
		return nil, fmt.Errorf("data dir %s is corrupt: %s does not parse: %w", path, identityFile, err)
	}
	if have.ClusterID != want.ClusterID {
		d.close()
		return nil, fmt.Errorf("data dir %s belongs to cluster %x (token %q), not to this cluster %x (token %q)", path, have.ClusterID, have.Token, want.ClusterID, want.Token)
	}
	if have.Name != want.Name {
		d.close()
		return nil, fmt.Errorf("data dir %s belongs to member %q, not to %q", path, have.Name, want.Name)
	}
	if have.MemberID != want.MemberID {
		d.close()
		return nil, fmt.Errorf("data dir %s belongs to member %q (%x), not to %q (%x)", path, have.Name, have.MemberID, want.Name, want.MemberID)
	}
	return d, nil
}

// create writes a fresh data dir's identity. It must run before any Raft
// data is written, so no data dir ever holds Raft data without an owner.
func (d *dataDir) create() error {
	if !d.fresh {
		return nil
	}
	return writeFileAtomic(filepath.Join(d.path, identityFile), mustJSON(d.want))
}

func (d *dataDir) raftDir() string { return filepath.Join(d.path, "raft") }

func (d *dataDir) close() {
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
}

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// writeFileAtomic writes via a temporary file, fsync, rename and a
// directory fsync, so a crash leaves either the old or the new file.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s: %w", path, err)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}
