package kv

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	// ErrCorruptCommand is wrapped by every error UnmarshalCommand returns,
	// and is the Result error for a log entry whose data cannot be decoded.
	ErrCorruptCommand = errors.New("kv: corrupt command")

	// ErrStaleSequence is wrapped by the Result error of a command whose
	// sequence number is below the last one applied for its client: the
	// client already moved on, so the original answer is gone.
	ErrStaleSequence = errors.New("kv: stale sequence number")

	// ErrIndexApplied is wrapped by the Result error of Apply called with a
	// log index at or below the applied index. The entry is ignored, so a
	// driver that replays its log over a restored snapshot cannot apply an
	// entry twice.
	ErrIndexApplied = errors.New("kv: log index already applied")

	// ErrCorruptSnapshot is wrapped by every error Restore returns for input
	// that is not a well-formed, intact snapshot.
	ErrCorruptSnapshot = errors.New("kv: corrupt snapshot")

	// ErrCorruptShard is wrapped by the error InstallShard returns for a
	// blob that is not a well-formed, intact ExportShard blob.
	ErrCorruptShard = errors.New("kv: corrupt shard blob")
)

// errInvalidCommand is the request error of a command that does not carry
// exactly one request.
var errInvalidCommand = status.Error(codes.InvalidArgument, "cairn: a command must carry exactly one request")

// errHistoricalRead answers a read at a revision below the current one.
func errHistoricalRead(rev, current int64) error {
	return status.Error(codes.Unimplemented, fmt.Sprintf(
		"cairn: historical reads are not supported yet: only the latest version of each key is kept (requested revision %d, current revision %d)",
		rev, current))
}

// errBadSequence answers a session command with sequence number 0.
var errBadSequence = status.Error(codes.InvalidArgument, "cairn: a session command needs a sequence number starting at 1")
