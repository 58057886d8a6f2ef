-- The classifier's precision and recall per masterCategory on the products it never trained
-- on (split = 'test'), largest classes first. `evaluate` draws the same as a confusion matrix.
--   ./spark-submit.sh sql file=conf/queries/classifier_precision.sql
WITH test AS (
  SELECT p.master_category AS actual, r.predicted
  FROM predictions r
  JOIN products p ON p.product_id = r.product_id
  WHERE r.split = 'test'
),
classes AS (
  SELECT actual AS class FROM test UNION SELECT predicted FROM test
),
counts AS (
  SELECT c.class,
         count_if(t.predicted = c.class AND t.actual = c.class) AS correct,
         count_if(t.predicted = c.class) AS predicted_as,
         count_if(t.actual = c.class) AS support
  FROM classes c CROSS JOIN test t
  GROUP BY c.class
)
SELECT class,
       round(try_divide(correct, predicted_as), 4) AS precision,
       round(try_divide(correct, support), 4) AS recall,
       support,
       predicted_as
FROM counts
ORDER BY support DESC, class
