# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_umbra_global_optspecs
    string join \n socket= h/help V/version
end

function __fish_umbra_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_umbra_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_umbra_using_subcommand
    set -l cmd (__fish_umbra_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c umbra -n "__fish_umbra_needs_command" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_needs_command" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "serve" -d 'Run the daemon in the foreground (logs to stderr; SIGTERM/SIGINT stop it cleanly)'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "volume" -d 'Create, add, remove and inspect volumes'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "export" -d 'Export volumes over NBD, list and remove exports'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "cache" -d 'Switch a volume\'s block cache on and off, and read its statistics'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "image" -d 'Point-in-time copies: shadows of a master volume, update, restore, groups'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "repl" -d 'Remote mirroring: sync, async and hybrid replication sets, managed from the primary'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "group" -d 'A group\'s state and seed 000\'s operations: online, offline, swap, failover, failback, join'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "cluster" -d 'Membership of a cluster on etcd: leases, group locks, automatic failover'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "generate-docs" -d 'Write the man pages and shell completions (from these definitions) into DIR'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "fault-proxy" -d 'Forward TCP with injected one-way delay (replication benchmarks)'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "hook" -d 'Run a command on events (notification hooks): add, list, remove'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "stats" -d 'Per-volume I/O: requests, bytes, errors, latency; rates with --interval'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "status" -d 'Show the daemon\'s state'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "events" -d 'Stream state changes (volumes, exports, services) as they happen'
complete -c umbra -n "__fish_umbra_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand serve" -l data-dir -d 'Data directory: configuration, admin socket, default backing files' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand serve" -l default-listen -d 'Where the default volume is exported on a first start (no configuration yet)' -r
complete -c umbra -n "__fish_umbra_using_subcommand serve" -l nbd-max-clients -d 'Clients each NBD listener accepts at once; more are closed on accept (and counted in `export list`)' -r
complete -c umbra -n "__fish_umbra_using_subcommand serve" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics (off unless given; `--metrics` alone listens on 127.0.0.1:9633, a bare port on loopback)' -r
complete -c umbra -n "__fish_umbra_using_subcommand serve" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand serve" -l no-default -d 'On a first start, create no default volume (a second daemon on one host, a host that scripts set up; `--default-listen` is then unused)'
complete -c umbra -n "__fish_umbra_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand serve" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "create" -d 'Create a new volume on a sparse backing file'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "add" -d 'Serve an existing file or raw block device as a volume'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "remove" -d 'Stop serving a volume (its backing file is kept unless --delete-data)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "resize" -d 'Grow (or shrink) a volume\'s backing file'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "list" -d 'List volumes'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "info" -d 'Show one volume in detail'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "reopen" -d 'Reopen a volume whose backend failed (or that could not be opened); alias: reset'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and not __fish_seen_subcommand_from create add remove resize list info reopen help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -l size -d 'Size, e.g. 1G, 512M, 4096 (binary units; a multiple of 512 bytes)' -r
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -l path -d 'Backing file to create [default: DATA_DIR/NAME.img]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -l engine -d 'I/O engine: auto = io_uring for O_DIRECT and raw devices, pread/pwrite for buffered files' -r -f -a "auto\t'io_uring where requests wait on a device (O_DIRECT, raw block devices), pread/pwrite on buffered regular files, where a request is a page-cache copy and a hand-off to the ring thread (and the kernel\'s io-wq) costs more than the copy. Measured in tools/bench-nbd.sh'
uring\t'io_uring, batched submission from a ring thread'
sync\t'pread/pwrite from the calling thread'"
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -l latency -d 'Add this delay to every request (`2ms`, `500us`): a slow device for tests and benchmarks, like dm-delay' -r
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -l direct -d 'Open the backing file with O_DIRECT (bypass the page cache)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from create" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -l path -d 'Existing regular file or block device' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -l engine -d 'I/O engine: auto = io_uring for O_DIRECT and raw devices, pread/pwrite for buffered files' -r -f -a "auto\t'io_uring where requests wait on a device (O_DIRECT, raw block devices), pread/pwrite on buffered regular files, where a request is a page-cache copy and a hand-off to the ring thread (and the kernel\'s io-wq) costs more than the copy. Measured in tools/bench-nbd.sh'
uring\t'io_uring, batched submission from a ring thread'
sync\t'pread/pwrite from the calling thread'"
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -l latency -d 'Add this delay to every request (`2ms`, `500us`): a slow device for tests and benchmarks, like dm-delay' -r
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -l direct -d 'Open the backing file with O_DIRECT (bypass the page cache)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from remove" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from remove" -l force -d 'Remove the volume\'s exports first (their clients are disconnected)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from remove" -l delete-data -d 'Delete the backing file too (a block device is never deleted)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from remove" -s y -l yes -d 'Do not ask before deleting data'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from remove" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from resize" -l size -d 'New size, e.g. 20G (binary units; a multiple of 512 bytes)' -r
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from resize" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from resize" -l json -d 'Print the volume as JSON after the change'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from resize" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from resize" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from list" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from info" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from info" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from info" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from info" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from reopen" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from reopen" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from reopen" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from reopen" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create a new volume on a sparse backing file'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "add" -d 'Serve an existing file or raw block device as a volume'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Stop serving a volume (its backing file is kept unless --delete-data)'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "resize" -d 'Grow (or shrink) a volume\'s backing file'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "list" -d 'List volumes'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "info" -d 'Show one volume in detail'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "reopen" -d 'Reopen a volume whose backend failed (or that could not be opened); alias: reset'
complete -c umbra -n "__fish_umbra_using_subcommand volume; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -f -a "nbd" -d 'Export a volume over NBD (export name = volume name)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -f -a "ublk" -d 'Export a volume as a Linux block device /dev/ublkbN (needs ublk_drv)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -f -a "list" -d 'List exports'
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -f -a "remove" -d 'Stop exporting a volume (its clients are disconnected)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and not __fish_seen_subcommand_from nbd ublk list remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -l listen -d 'HOST:PORT or unix:PATH [default: 127.0.0.1:10809]' -r
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -l mode -d 'unix:PATH only: the socket\'s permission bits, octal [default: 0600, only the daemon\'s user may connect]' -r
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -l tls-certificates -d 'Serve TLS (NBD_OPT_STARTTLS; clients must use it) with the certificate and key in DIR: server-cert.pem (the chain) and server-key.pem, as qemu-nbd and nbdkit lay them out (clients use the ca-cert.pem beside them). Applies to the whole TCP listener' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -l read-only -d 'Refuse writes from clients'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from nbd" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from ublk" -l queues -d 'Queues (one thread and one io_uring each)' -r
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from ublk" -l depth -d 'Requests in flight per queue' -r
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from ublk" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from ublk" -l read-only -d 'Refuse writes'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from ublk" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from ublk" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from ublk" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from list" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from remove" -l kind -d 'nbd or ublk, when the volume has both' -r
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from remove" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from remove" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "nbd" -d 'Export a volume over NBD (export name = volume name)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "ublk" -d 'Export a volume as a Linux block device /dev/ublkbN (needs ublk_drv)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "list" -d 'List exports'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Stop exporting a volume (its clients are disconnected)'
complete -c umbra -n "__fish_umbra_using_subcommand export; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and not __fish_seen_subcommand_from enable disable stats help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cache; and not __fish_seen_subcommand_from enable disable stats help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and not __fish_seen_subcommand_from enable disable stats help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and not __fish_seen_subcommand_from enable disable stats help" -f -a "enable" -d 'Put a read cache at the bottom of a volume\'s stack, while it serves'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and not __fish_seen_subcommand_from enable disable stats help" -f -a "disable" -d 'Remove a volume\'s cache, while it serves'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and not __fish_seen_subcommand_from enable disable stats help" -f -a "stats" -d 'Hits, misses, hit ratio, read-ahead and invalidations'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and not __fish_seen_subcommand_from enable disable stats help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -l size -d 'Memory for cached blocks, e.g. 256M, 1G (at least 1M)' -r
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -l mode -r -f -a "write-through\t''
write-back\t''"
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -l safe-store -d 'Write-back: the safe store file to create (on fast storage)' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -l safe-store-size -d 'Write-back: size of the safe store; dirty data is bounded by it' -r
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from enable" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from disable" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from disable" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from disable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from disable" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from stats" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from stats" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from stats" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "enable" -d 'Put a read cache at the bottom of a volume\'s stack, while it serves'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "disable" -d 'Remove a volume\'s cache, while it serves'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Hits, misses, hit ratio, read-ahead and invalidations'
complete -c umbra -n "__fish_umbra_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "enable" -d 'Establish a point-in-time shadow of a master volume'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "update" -d 'Take a new point in time (--to shadow) or restore the master (--to master), changed chunks only'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "copy" -d 'Like update, but copy every chunk (a full copy)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "wait" -d 'Wait until a set\'s copy finishes, with a progress bar on a terminal'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "abort" -d 'Stop a running copy; the target stays dependent on the source for what is left'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "disable" -d 'End a set (the bitmap volume is deleted)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "throttle" -d 'Slow the background copy: sleep DELAY ms after every UNIT chunks'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "list" -d 'List image sets'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "info" -d 'Show one image set'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "group" -d 'Group sets so that one update takes a single point in time across them'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "overflow" -d 'Overflow volumes: shared spill space for compact shadows'
complete -c umbra -n "__fish_umbra_using_subcommand image; and not __fish_seen_subcommand_from enable update copy wait abort disable throttle list info group overflow help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l master -d 'Volume to take the point in time of' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l shadow -d 'Volume that shows the point in time (created at the master\'s size if missing)' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l mode -r -f -a "independent\t''
dependent\t''
compact\t'Dependent, with a shadow smaller than the master (needs --shadow-size)'"
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l bitmap -d 'Bitmap volume file to create [default: DATA_DIR/SET.bitmap]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l chunk-size -d 'Copy and tracking unit: a power of two from 4K to 1M' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l shadow-size -d 'Size of a shadow volume created by this command [default: the master\'s size]; for a compact set, the store for saved chunks' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l overflow -d 'A compact set\'s overflow volume (see `image overflow create`)' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l throttle-delay-ms -d 'Throttle the background copy from the start: sleep this many ms…' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l throttle-unit -d '…after every this many chunks (see `image throttle`)' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l memory-bitmap -d 'Keep the bits in memory, written only at a clean shutdown: no bitmap I/O on writes, but after a crash an idle independent set is recopied in full (a new point in time) and any other set\'s shadow goes offline'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l wait -d 'Wait for an independent set\'s copy to finish'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -s y -l yes -d 'Overwrite an existing shadow volume that holds data without asking'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -l json
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from enable" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -l group -d 'Every set of this group, at one point in time' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -l to -d 'shadow: new point in time; master: restore the master' -r -f -a "shadow\t''
master\t''"
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -s y -l yes -d 'Do not ask before restoring the master'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -l force -d 'Restore even though the master is exported read-write'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -l wait -d 'Wait for the copy to finish'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from update" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -l group -d 'Every set of this group, at one point in time' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -l to -d 'shadow: new point in time; master: restore the master' -r -f -a "shadow\t''
master\t''"
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -s y -l yes -d 'Do not ask before restoring the master'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -l force -d 'Restore even though the master is exported read-write'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -l wait -d 'Wait for the copy to finish'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from copy" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from wait" -l timeout -d 'Give up after this long (exit 1; 30s, 10m); without it, wait as long as it takes' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from wait" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from wait" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from wait" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from wait" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from abort" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from abort" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from abort" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from abort" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from disable" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from disable" -l force -d 'Disable even though the independent shadow is incomplete'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from disable" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from disable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from disable" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from throttle" -l delay-ms -d 'Milliseconds to sleep' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from throttle" -l unit -d 'Chunks copied between sleeps (0: no throttle)' -r
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from throttle" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from throttle" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from throttle" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from throttle" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from list" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from list" -l json
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from info" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from info" -l json
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from info" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from info" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from group" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from group" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from group" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from group" -f -a "create" -d 'Create a group of sets'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from group" -f -a "remove" -d 'Remove a group (its sets stay)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from group" -f -a "list" -d 'List groups'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from group" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -f -a "create" -d 'Create an overflow volume'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -f -a "attach" -d 'Let a compact set spill into an overflow volume'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -f -a "detach" -d 'Stop a compact set spilling (refused while its chunks live there)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -f -a "info" -d 'Capacity, use and sets of overflow volumes'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -f -a "remove" -d 'Delete an overflow volume no set uses'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from overflow" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "enable" -d 'Establish a point-in-time shadow of a master volume'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "update" -d 'Take a new point in time (--to shadow) or restore the master (--to master), changed chunks only'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "copy" -d 'Like update, but copy every chunk (a full copy)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "wait" -d 'Wait until a set\'s copy finishes, with a progress bar on a terminal'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "abort" -d 'Stop a running copy; the target stays dependent on the source for what is left'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "disable" -d 'End a set (the bitmap volume is deleted)'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "throttle" -d 'Slow the background copy: sleep DELAY ms after every UNIT chunks'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "list" -d 'List image sets'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "info" -d 'Show one image set'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "group" -d 'Group sets so that one update takes a single point in time across them'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "overflow" -d 'Overflow volumes: shared spill space for compact shadows'
complete -c umbra -n "__fish_umbra_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "setup" -d 'Name this node and start its replication listener'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "peer" -d 'Trust a peer: the secret both nodes share'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "enable" -d 'Mirror a local volume to a peer\'s volume (sets up both sides)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "sync" -d 'Copy out-of-sync chunks to the peer (or back, --reverse); ends in replicating'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "verify" -d 'Compare both sides chunk by chunk while replicating (online verify)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "log" -d 'Suspend mirroring: writes are only recorded in the scoreboard'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "wait" -d 'Wait until a set reaches a state (default: replicating)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "swap" -d 'Reverse the roles: the secondary becomes the primary (failover, failback)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "resolve" -d 'End a split brain: pick the side whose data is discarded'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "disable" -d 'End a set on both sides (the scoreboard is deleted)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "list" -d 'List replication sets'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "info" -d 'Show a set: state, lag, out-of-sync bytes, safety snapshot'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "status" -d 'This node\'s name, listener and peers'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "tune" -d 'Change a set\'s resync rate, also while a sync runs'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and not __fish_seen_subcommand_from setup peer enable sync verify log wait swap resolve disable list info status tune help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from setup" -l node -d 'This node\'s name' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from setup" -l listen -d 'Replication listener address, HOST:PORT' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from setup" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from setup" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from setup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from setup" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from peer" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from peer" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from peer" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from peer" -f -a "add" -d 'Trust peer NAME with the secret in FILE (both nodes need the same secret)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from peer" -f -a "remove" -d 'Forget a peer'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from peer" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l local -d 'The local (primary) volume' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l peer -d 'The peer\'s replication listener, HOST:PORT' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l remote -d 'The peer\'s volume (the secondary)' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l mode -r -f -a "sync\t''
async\t''
hybrid\t''"
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l group -d 'Consistency group: sets in a group share one write order, drop to logging together and sync together' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l on-peer-loss -d 'When the peer is lost: keep writing and log (default), or fail writes with EIO' -r -f -a "log\t''
fail\t''"
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l timeout -d 'Peer timeout: no frame for this long and the link is down (e.g. 10s, 500ms)' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l queue-bytes -d 'Async/hybrid queue limit in bytes (default 64M)' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l queue-items -d 'Async/hybrid queue limit in writes (default 16384)' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l on-queue-full -d 'When the queue is full: block writers (default) or drop to logging' -r -f -a "block\t''
log\t''"
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l max-lag -d 'RPO bound for async/hybrid: writers wait (never fail) while the peer lags more than this, a time (5s, 500ms) or an amount of data (64M)' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l sync-rate -d 'Resync bandwidth limit per second (e.g. 100M); `repl tune` changes it on a running sync' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l no-sync -d 'The volumes are known identical: start replicating at once'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l no-autosync -d 'Do not start an update sync by itself when the peer comes back'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from enable" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l timeout -d 'With --wait: give up after this long (1h, 30m); without it, wait as long as it takes' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l full -d 'Copy every chunk'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l update -d 'Copy only the changed chunks (the default)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l reverse -d 'Copy from the peer to this host'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l force -d 'Reverse sync even though the local volume is exported read-write'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l checksum -d 'Send only the chunks whose checksums differ from the peer\'s'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l wait -d 'Wait until the set is replicating'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from sync" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from verify" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from verify" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from verify" -l wait -d 'Wait for the result (progress on a terminal); exit 1 if chunks differ'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from verify" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from verify" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from log" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from log" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from log" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from log" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from log" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from wait" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from wait" -l state -d 'The state to wait for' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from wait" -l timeout -d 'Give up after this long (10m, 30s); without it, wait as long as it takes' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from wait" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from wait" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from wait" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from wait" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from swap" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from swap" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from swap" -l force -d 'Act on this side only (the peer is unreachable or was failed over)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from swap" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from swap" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from swap" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from resolve" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from resolve" -l discard -d 'Whose data to throw away: `here` or `peer`' -r -f -a "here\t''
peer\t''"
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from resolve" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from resolve" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from resolve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from resolve" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from disable" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from disable" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from disable" -l force -d 'End this side even when the peer cannot be reached'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from disable" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from disable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from disable" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from list" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from info" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from info" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from info" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from info" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from info" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from status" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from status" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from tune" -l secondary -d 'Which secondary (node name), when the set has several' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from tune" -l sync-rate -d 'Resync bandwidth per second (e.g. 100M; 0: unlimited)' -r
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from tune" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from tune" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from tune" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from tune" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "setup" -d 'Name this node and start its replication listener'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "peer" -d 'Trust a peer: the secret both nodes share'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "enable" -d 'Mirror a local volume to a peer\'s volume (sets up both sides)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "sync" -d 'Copy out-of-sync chunks to the peer (or back, --reverse); ends in replicating'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Compare both sides chunk by chunk while replicating (online verify)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "log" -d 'Suspend mirroring: writes are only recorded in the scoreboard'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "wait" -d 'Wait until a set reaches a state (default: replicating)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "swap" -d 'Reverse the roles: the secondary becomes the primary (failover, failback)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "resolve" -d 'End a split brain: pick the side whose data is discarded'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "disable" -d 'End a set on both sides (the scoreboard is deleted)'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "list" -d 'List replication sets'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "info" -d 'Show a set: state, lag, out-of-sync bytes, safety snapshot'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "status" -d 'This node\'s name, listener and peers'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "tune" -d 'Change a set\'s resync rate, also while a sync runs'
complete -c umbra -n "__fish_umbra_using_subcommand repl; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "status" -d 'Where the group is production, every replica\'s state, what `online` here would do'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "online" -d 'Make this node (or --to NODE) production for the group'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "offline" -d 'On the production node: flush, stop serving writes, leave replicas in sync'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "failover" -d 'Failover: bring the group online on NODE (default this node) when production is lost'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "swap" -d 'Planned swap from the production node to a replica (--to, or the preferred one)'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "failback" -d 'Return production to the group\'s first preferred node'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "join" -d 'On a node back after a forced takeover: step down and resync from production'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "wait" -d 'Wait until the group is online here, offline here, in sync or consistent'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "verify" -d 'Check that every member has the same definition and policy'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "policy" -d 'Show or change the group\'s policy (sent to every member)'
complete -c umbra -n "__fish_umbra_using_subcommand group; and not __fish_seen_subcommand_from status online offline failover swap failback join wait verify policy help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from status" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from status" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -l to -d 'Run it on this node instead of here' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -l timeout -d 'Give up after this long (120s, 5m; like every role change)' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -l accept-data-loss -d 'Take over although acknowledged writes may be missing here'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -l use-inconsistent -d 'A copy cut mid-resync comes up on its safety snapshot\'s data'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -l json
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from online" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from offline" -l timeout -d 'Give up after this long (120s, 5m; like every role change)' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from offline" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from offline" -l json
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from offline" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from offline" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -l to -d 'Run it on this node instead of here' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -l timeout -d 'Give up after this long (120s, 5m; like every role change)' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -l accept-data-loss -d 'Take over although acknowledged writes may be missing here'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -l use-inconsistent -d 'A copy cut mid-resync comes up on its safety snapshot\'s data'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -l json
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failover" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from swap" -l to -d 'The replica to hand production to' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from swap" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from swap" -l json
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from swap" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from swap" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failback" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failback" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failback" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from failback" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from join" -l timeout -d 'Give up after this long (120s, 5m; like every role change)' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from join" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from join" -l json
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from join" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from join" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from wait" -l state -r -f -a "online\t''
offline\t''
in-sync\t''
consistent\t''"
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from wait" -l timeout -d 'Give up after this long (10m, 30s); without it, wait as long as it takes' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from wait" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from wait" -l json
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from wait" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from wait" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from verify" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from verify" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from verify" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l preferred -d 'Nodes that should run the group, best first' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l max-lag-on-failover -d 'Most acknowledged data a takeover may lose (e.g. 0, 64K, 1M)' -r
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l auto-failover -r -f -a "on\t''
off\t''"
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l auto-accept-data-loss -r -f -a "on\t''
off\t''"
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l offline-exports -d 'What `group offline` does to the exports' -r -f -a "read-only\t''
remove\t''
keep\t''"
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l fence -d 'A fenced production node (lease not renewed): fail writes with EIO, or hold them until the lease is back (or the node steps down)' -r -f -a "eio\t''
block\t''"
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -l json
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from policy" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "status" -d 'Where the group is production, every replica\'s state, what `online` here would do'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "online" -d 'Make this node (or --to NODE) production for the group'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "offline" -d 'On the production node: flush, stop serving writes, leave replicas in sync'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "failover" -d 'Failover: bring the group online on NODE (default this node) when production is lost'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "swap" -d 'Planned swap from the production node to a replica (--to, or the preferred one)'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "failback" -d 'Return production to the group\'s first preferred node'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "join" -d 'On a node back after a forced takeover: step down and resync from production'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "wait" -d 'Wait until the group is online here, offline here, in sync or consistent'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Check that every member has the same definition and policy'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "policy" -d 'Show or change the group\'s policy (sent to every member)'
complete -c umbra -n "__fish_umbra_using_subcommand group; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -f -a "join" -d 'Join (or create) cluster NAME kept in etcd'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -f -a "leave" -d 'Leave the cluster: hand production groups over first, then revoke the lease'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -f -a "status" -d 'Members, leases, priority keys, groups and their owners, as etcd has them'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -f -a "priority" -d 'Bias this node\'s priority key (higher: taken later as a failover candidate)'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and not __fish_seen_subcommand_from join leave status priority help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from join" -l etcd -d 'etcd client URLs' -r
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from join" -l name -d 'The cluster\'s name (its keys live under /umbra/NAME/)' -r
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from join" -l ttl -d 'Lease time to live, whole seconds (10s, 1m)' -r
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from join" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from join" -l json
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from join" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from join" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from leave" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from leave" -l json
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from leave" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from leave" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from status" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from status" -l json
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from priority" -l bias -d 'Added to the priority key' -r
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from priority" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from priority" -l json
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from priority" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from priority" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "join" -d 'Join (or create) cluster NAME kept in etcd'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "leave" -d 'Leave the cluster: hand production groups over first, then revoke the lease'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "status" -d 'Members, leases, priority keys, groups and their owners, as etcd has them'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "priority" -d 'Bias this node\'s priority key (higher: taken later as a failover candidate)'
complete -c umbra -n "__fish_umbra_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand generate-docs" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand generate-docs" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand generate-docs" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand fault-proxy" -l listen -d 'Listen address, HOST:PORT' -r
complete -c umbra -n "__fish_umbra_using_subcommand fault-proxy" -l to -d 'Forward to HOST:PORT' -r
complete -c umbra -n "__fish_umbra_using_subcommand fault-proxy" -l delay-us -d 'One-way delay in microseconds, each direction' -r
complete -c umbra -n "__fish_umbra_using_subcommand fault-proxy" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand fault-proxy" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand fault-proxy" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and not __fish_seen_subcommand_from add list remove help" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand hook; and not __fish_seen_subcommand_from add list remove help" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and not __fish_seen_subcommand_from add list remove help" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and not __fish_seen_subcommand_from add list remove help" -f -a "add" -d 'Run a command for every event of the given kinds'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and not __fish_seen_subcommand_from add list remove help" -f -a "list" -d 'List hooks with how their runs went'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and not __fish_seen_subcommand_from add list remove help" -f -a "remove" -d 'Stop running a hook and forget it'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and not __fish_seen_subcommand_from add list remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from add" -l on -d 'Comma-separated event kinds: exact, prefix*, or *' -r
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from add" -l run -d 'The command to run (made absolute; no shell, no arguments)' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from add" -l timeout -d 'Kill the command after this long (10s, 500ms)' -r
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from add" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from add" -l json -d 'Print the hook as JSON'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from list" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from remove" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from remove" -l json -d 'Print the result as JSON (the object as it is after the change)'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from help" -f -a "add" -d 'Run a command for every event of the given kinds'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from help" -f -a "list" -d 'List hooks with how their runs went'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Stop running a hook and forget it'
complete -c umbra -n "__fish_umbra_using_subcommand hook; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand stats" -s i -l interval -d 'Print rates over each interval (10s, 500ms), until interrupted or --count intervals; without it, totals since the volume came online' -r
complete -c umbra -n "__fish_umbra_using_subcommand stats" -s c -l count -d 'Stop after this many intervals' -r
complete -c umbra -n "__fish_umbra_using_subcommand stats" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand stats" -l json -d 'Print the daemon\'s counters as JSON (one object per sample)'
complete -c umbra -n "__fish_umbra_using_subcommand stats" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand stats" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand status" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand status" -l json -d 'Print machine-readable JSON'
complete -c umbra -n "__fish_umbra_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand status" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand events" -l socket -d 'Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]' -r -F
complete -c umbra -n "__fish_umbra_using_subcommand events" -s f -l follow -d 'Keep streaming until interrupted (what `events` does unless only `--now` is given)'
complete -c umbra -n "__fish_umbra_using_subcommand events" -l now -d 'Start with the current state of every object (`KIND.state` events: volumes, exports, image sets, replication sets, hooks), then `now.done`; without `--follow`, exit there'
complete -c umbra -n "__fish_umbra_using_subcommand events" -l json -d 'Print each event as one JSON line'
complete -c umbra -n "__fish_umbra_using_subcommand events" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c umbra -n "__fish_umbra_using_subcommand events" -s V -l version -d 'Print version'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "serve" -d 'Run the daemon in the foreground (logs to stderr; SIGTERM/SIGINT stop it cleanly)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "volume" -d 'Create, add, remove and inspect volumes'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "export" -d 'Export volumes over NBD, list and remove exports'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "cache" -d 'Switch a volume\'s block cache on and off, and read its statistics'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "image" -d 'Point-in-time copies: shadows of a master volume, update, restore, groups'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "repl" -d 'Remote mirroring: sync, async and hybrid replication sets, managed from the primary'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "group" -d 'A group\'s state and seed 000\'s operations: online, offline, swap, failover, failback, join'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "cluster" -d 'Membership of a cluster on etcd: leases, group locks, automatic failover'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "generate-docs" -d 'Write the man pages and shell completions (from these definitions) into DIR'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "fault-proxy" -d 'Forward TCP with injected one-way delay (replication benchmarks)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "hook" -d 'Run a command on events (notification hooks): add, list, remove'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "stats" -d 'Per-volume I/O: requests, bytes, errors, latency; rates with --interval'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "status" -d 'Show the daemon\'s state'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "events" -d 'Stream state changes (volumes, exports, services) as they happen'
complete -c umbra -n "__fish_umbra_using_subcommand help; and not __fish_seen_subcommand_from serve volume export cache image repl group cluster generate-docs fault-proxy hook stats status events help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from volume" -f -a "create" -d 'Create a new volume on a sparse backing file'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from volume" -f -a "add" -d 'Serve an existing file or raw block device as a volume'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from volume" -f -a "remove" -d 'Stop serving a volume (its backing file is kept unless --delete-data)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from volume" -f -a "resize" -d 'Grow (or shrink) a volume\'s backing file'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from volume" -f -a "list" -d 'List volumes'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from volume" -f -a "info" -d 'Show one volume in detail'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from volume" -f -a "reopen" -d 'Reopen a volume whose backend failed (or that could not be opened); alias: reset'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from export" -f -a "nbd" -d 'Export a volume over NBD (export name = volume name)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from export" -f -a "ublk" -d 'Export a volume as a Linux block device /dev/ublkbN (needs ublk_drv)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from export" -f -a "list" -d 'List exports'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from export" -f -a "remove" -d 'Stop exporting a volume (its clients are disconnected)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "enable" -d 'Put a read cache at the bottom of a volume\'s stack, while it serves'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "disable" -d 'Remove a volume\'s cache, while it serves'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "stats" -d 'Hits, misses, hit ratio, read-ahead and invalidations'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "enable" -d 'Establish a point-in-time shadow of a master volume'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "update" -d 'Take a new point in time (--to shadow) or restore the master (--to master), changed chunks only'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "copy" -d 'Like update, but copy every chunk (a full copy)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "wait" -d 'Wait until a set\'s copy finishes, with a progress bar on a terminal'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "abort" -d 'Stop a running copy; the target stays dependent on the source for what is left'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "disable" -d 'End a set (the bitmap volume is deleted)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "throttle" -d 'Slow the background copy: sleep DELAY ms after every UNIT chunks'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "list" -d 'List image sets'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "info" -d 'Show one image set'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "group" -d 'Group sets so that one update takes a single point in time across them'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "overflow" -d 'Overflow volumes: shared spill space for compact shadows'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "setup" -d 'Name this node and start its replication listener'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "peer" -d 'Trust a peer: the secret both nodes share'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "enable" -d 'Mirror a local volume to a peer\'s volume (sets up both sides)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "sync" -d 'Copy out-of-sync chunks to the peer (or back, --reverse); ends in replicating'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "verify" -d 'Compare both sides chunk by chunk while replicating (online verify)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "log" -d 'Suspend mirroring: writes are only recorded in the scoreboard'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "wait" -d 'Wait until a set reaches a state (default: replicating)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "swap" -d 'Reverse the roles: the secondary becomes the primary (failover, failback)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "resolve" -d 'End a split brain: pick the side whose data is discarded'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "disable" -d 'End a set on both sides (the scoreboard is deleted)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "list" -d 'List replication sets'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "info" -d 'Show a set: state, lag, out-of-sync bytes, safety snapshot'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "status" -d 'This node\'s name, listener and peers'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from repl" -f -a "tune" -d 'Change a set\'s resync rate, also while a sync runs'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "status" -d 'Where the group is production, every replica\'s state, what `online` here would do'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "online" -d 'Make this node (or --to NODE) production for the group'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "offline" -d 'On the production node: flush, stop serving writes, leave replicas in sync'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "failover" -d 'Failover: bring the group online on NODE (default this node) when production is lost'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "swap" -d 'Planned swap from the production node to a replica (--to, or the preferred one)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "failback" -d 'Return production to the group\'s first preferred node'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "join" -d 'On a node back after a forced takeover: step down and resync from production'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "wait" -d 'Wait until the group is online here, offline here, in sync or consistent'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "verify" -d 'Check that every member has the same definition and policy'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from group" -f -a "policy" -d 'Show or change the group\'s policy (sent to every member)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from cluster" -f -a "join" -d 'Join (or create) cluster NAME kept in etcd'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from cluster" -f -a "leave" -d 'Leave the cluster: hand production groups over first, then revoke the lease'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from cluster" -f -a "status" -d 'Members, leases, priority keys, groups and their owners, as etcd has them'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from cluster" -f -a "priority" -d 'Bias this node\'s priority key (higher: taken later as a failover candidate)'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from hook" -f -a "add" -d 'Run a command for every event of the given kinds'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from hook" -f -a "list" -d 'List hooks with how their runs went'
complete -c umbra -n "__fish_umbra_using_subcommand help; and __fish_seen_subcommand_from hook" -f -a "remove" -d 'Stop running a hook and forget it'
