package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"

	"github.com/cairn-db/cairn/client"
)

// Bank is the classic transfer workload (as in Jepsen's bank test): money
// moves between accounts in transactions that are guarded by the
// accounts' mod revisions, so a transfer either sees the balances it read
// or does nothing. Every read of all accounts — one range read, which is
// atomic — must show the same total and no negative balance. A lost,
// doubled or half-applied transfer breaks the total.
type Bank struct {
	Prefix string // account keys are Prefix + index
	// Keys, when set, are the account keys instead: sorted, Accounts of
	// them, all under Prefix (a sharded cluster needs them in one shard).
	Keys     []string
	Accounts int
	Initial  int64 // starting balance of each account

	mu         sync.Mutex
	transfers  int // acknowledged transfers that moved money
	conflicts  int // transfers refused because balances changed meanwhile
	unknown    int // transfers whose outcome is unknown
	reads      int // full reads checked
	violations []string
}

// Total is the amount of money that must always be in the bank.
func (b *Bank) Total() int64 { return int64(b.Accounts) * b.Initial }

func (b *Bank) key(i int) string {
	if b.Keys != nil {
		return b.Keys[i]
	}
	return fmt.Sprintf("%s%03d", b.Prefix, i)
}

// Setup creates the accounts once: a transaction that succeeds only if
// none exists, so it is safe to retry.
func (b *Bank) Setup(ctx context.Context, cl *client.Client) error {
	txn := cl.Txn()
	var puts []client.Op
	for i := range b.Accounts {
		txn.If(client.CompareVersion(b.key(i), "=", 0))
		puts = append(puts, client.OpPut(b.key(i), strconv.FormatInt(b.Initial, 10)))
	}
	if _, err := txn.Then(puts...).Commit(ctx); err != nil {
		return fmt.Errorf("bank: creating accounts: %w", err)
	}
	// Whether this call or a lost earlier attempt created them, the
	// accounts must now hold exactly the initial total.
	_, err := b.Check(ctx, cl)
	return err
}

type account struct {
	balance int64
	modRev  int64
}

func (b *Bank) read(ctx context.Context, cl *client.Client) ([]account, error) {
	r, err := cl.Get(ctx, b.Prefix, client.WithPrefix(), client.WithSortByKey())
	if err != nil {
		return nil, err
	}
	if len(r.KVs) != b.Accounts {
		b.violate(fmt.Sprintf("a read saw %d accounts, want %d", len(r.KVs), b.Accounts))
		return nil, errors.New("bank: wrong number of accounts")
	}
	accts := make([]account, len(r.KVs))
	for i, kv := range r.KVs {
		v, err := strconv.ParseInt(kv.Value, 10, 64)
		if err != nil {
			b.violate(fmt.Sprintf("account %s holds %q, not a number", kv.Key, kv.Value))
			return nil, err
		}
		accts[i] = account{balance: v, modRev: kv.ModRevision}
	}
	return accts, nil
}

// Check reads every account at once and records a violation if the total
// is wrong or a balance is negative. It returns the total.
func (b *Bank) Check(ctx context.Context, cl *client.Client) (int64, error) {
	accts, err := b.read(ctx, cl)
	if err != nil {
		return 0, err
	}
	var total int64
	for i, a := range accts {
		total += a.balance
		if a.balance < 0 {
			b.violate(fmt.Sprintf("account %s is negative: %d", b.key(i), a.balance))
		}
	}
	b.mu.Lock()
	b.reads++
	b.mu.Unlock()
	if total != b.Total() {
		b.violate(fmt.Sprintf("a read saw a total of %d, want %d (balances %v)", total, b.Total(), accts))
	}
	return total, nil
}

// Transfer moves a random amount between two random accounts, guarded by
// the balances it read.
func (b *Bank) Transfer(ctx context.Context, cl *client.Client, rng *rand.Rand) error {
	accts, err := b.read(ctx, cl)
	if err != nil {
		return err
	}
	from, to := rng.IntN(b.Accounts), rng.IntN(b.Accounts-1)
	if to >= from {
		to++
	}
	if accts[from].balance == 0 {
		return nil
	}
	amount := 1 + rng.Int64N(accts[from].balance)
	r, err := cl.Txn().
		If(client.CompareModRevision(b.key(from), "=", accts[from].modRev),
			client.CompareModRevision(b.key(to), "=", accts[to].modRev)).
		Then(client.OpPut(b.key(from), strconv.FormatInt(accts[from].balance-amount, 10)),
			client.OpPut(b.key(to), strconv.FormatInt(accts[to].balance+amount, 10))).
		Commit(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case errors.Is(err, client.ErrOutcomeUnknown):
		b.unknown++ // either outcome keeps the total; reads will tell
	case err != nil:
		return err
	case r.Succeeded:
		b.transfers++
	default:
		b.conflicts++
	}
	return nil
}

func (b *Bank) violate(s string) {
	b.mu.Lock()
	b.violations = append(b.violations, s)
	b.mu.Unlock()
}

// BankReport summarizes a bank run.
type BankReport struct {
	Transfers, Conflicts, Unknown, Reads int
	Violations                           []string
}

// OK reports whether no check failed.
func (r BankReport) OK() bool { return len(r.Violations) == 0 }

func (r BankReport) String() string {
	s := fmt.Sprintf("%d transfers (%d refused by a concurrent change, %d unknown), %d full reads checked", r.Transfers, r.Conflicts, r.Unknown, r.Reads)
	if len(r.Violations) > 0 {
		s += fmt.Sprintf("; %d violations, first: %s", len(r.Violations), r.Violations[0])
	}
	return s
}

// Report returns what the bank saw so far.
func (b *Bank) Report() BankReport {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BankReport{Transfers: b.transfers, Conflicts: b.conflicts, Unknown: b.unknown, Reads: b.reads,
		Violations: append([]string(nil), b.violations...)}
}
