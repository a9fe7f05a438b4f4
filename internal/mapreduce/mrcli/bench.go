package mrcli

func runBench(env Env, args []string) int {
	return 2
}
